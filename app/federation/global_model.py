"""The server's global model: the policy whose trainable arrays each round replaces, the fingerprint of its frozen
base (which every node's must match), and the server's held-out dataset it is evaluated on. It never trains:
`server-eval-dataset` is all held out. It is where a run's checkpoints are written from, and where `resume-from`
loads one into."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from app.common.config import RunConfig, resolve_device
from app.common.errors import ConfigError
from app.common.telemetry import get_logger
from app.federation.resume import LATEST
from app.learning import model as models
from app.learning.checkpoint import LOSS_CHART, checkpoint_round, save_checkpoint, usable_checkpoint
from app.learning.learner import Processors, evaluate_heldout, policy_config_and_data

log = get_logger(__name__)


class GlobalModel:
    def __init__(self, run: RunConfig, policy, config, data=None):
        self.run, self.policy, self.config, self.data = run, policy, config, data  # data: no train split
        self.fingerprint = models.frozen_fingerprint(policy)
        self.processors = Processors(config)

    @classmethod
    def build(cls, run: RunConfig) -> GlobalModel:
        """The run's base model, and every episode of its `server-eval-dataset` held out for evaluation."""
        config, data = policy_config_and_data(
            run.model, resolve_device(run.device), run.cameras, run.camera_map, run.server_eval_dataset, run.fps,
            run.heldout_fraction, run.seed, evaluation_only=True,
        )
        return cls(run, models.build_policy(run.model, config), config, data)

    def arrays(self) -> ArrayRecord:
        """The trainable arrays, as a round sends them."""
        return ArrayRecord(models.trainable_state(self.policy))

    def load(self, arrays: ArrayRecord | dict) -> None:
        state = arrays.to_torch_state_dict() if isinstance(arrays, ArrayRecord) else arrays
        models.load_trainable_state(self.policy, state)

    def digest(self) -> str:
        return models.tensors_digest(models.trainable_state(self.policy))

    def evaluate(self, arrays: ArrayRecord, stats: dict[str, Any]) -> dict[str, float]:
        """The held-out loss of `arrays` on the server's dataset, normalized with the federation's `stats`."""
        self.load(arrays)
        preprocessor, _ = self.processors(stats)
        return evaluate_heldout(self.policy, preprocessor, self.data.heldout, self.run)

    def resume_from_checkpoint(self) -> int:
        """Load the global weights of `resume-from` into the policy; returns the rounds already done (0 if starting
        fresh). The round count, the learning-rate schedule and checkpoint numbering carry on from there."""
        run = self.run
        if run.resume_from in ("", LATEST):  # "latest" carries on an interrupted run from its own state (resume)
            return 0
        directory = usable_checkpoint(Path(run.resume_from).expanduser())  # a corrupt one: the previous, logged
        done = checkpoint_round(directory)
        if done >= run.num_server_rounds:
            raise ConfigError(f"resume-from is at round {done}; set num-server-rounds above it to train more")
        saved = models.build_policy(str(directory), self.config)
        if models.frozen_fingerprint(saved) != self.fingerprint:
            raise ConfigError(f"resume-from {str(directory)!r} was trained from another base model than "
                              f"model={run.model!r}")
        self.load(models.trainable_state(saved))
        log.info("resumed", checkpoint=str(directory), rounds_done=done)
        return done

    def save_checkpoint(self, arrays: ArrayRecord, stats: dict, outputs, summary: dict, node_datasets: dict[str, str],
                        tracker_url: str | None) -> tuple[Path, float]:
        """`arrays` after `summary`'s round as a LeRobot checkpoint with its processors and model card. Returns its
        path and the seconds it took."""
        started = time.perf_counter()
        server_round = summary["round"]
        self.load(arrays)
        preprocessor, postprocessor = self.processors(stats)
        path = outputs.models / f"checkpoint_round_{server_round}"
        card = outputs.model_card(self.run, server_round, node_datasets, summary, tracker_url, chart=True)
        checkpoint_metrics = {"round": server_round, "server-eval-loss": outputs.server_eval.get(server_round),
                              "train-loss": summary["train-loss"], "nodes": node_datasets}
        with tempfile.TemporaryDirectory() as scratch:
            chart = outputs.loss_chart(Path(scratch) / LOSS_CHART)
            save_checkpoint(path, self.policy, preprocessor, postprocessor, checkpoint_metrics, card,
                            {LOSS_CHART: chart})
        log.info("checkpoint_saved", round=server_round, path=str(path))
        return path, time.perf_counter() - started
