"""What a node does with plain Python objects: its policy, its data, a round's local training and evaluation.
Knows nothing of Flower; app.federation.client_work translates messages to calls.

A `Learner` is built from what is on the node's disk (the model directory, the dataset) and kept warm between
messages by app.node.worker. The server's own model is app.federation.global_model's `GlobalModel`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.common.config import NodeConfig, RunConfig, parse_camera_map, parse_cameras, resolve_device
from app.learning.data import SchemaFit
from app.common.errors import ConfigError
from app.common.telemetry import get_logger

log = get_logger(__name__)

# A train round's metrics when the node first evaluated the global model it received (the previous round's).
RECEIVED_EVAL_LOSS = "received-eval-loss"
RECEIVED_EVAL_EXAMPLES = "received-eval-examples"
NORMALIZED_KEYS = ("observation.state", "action")  # SmolVLA normalizes state and action; images pass through
STAT_FIELDS = ("mean", "std", "min", "max", "count")


def flatten_stats(stats: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """LeRobot stats -> {"observation.state/mean": [...], ...}: the part a federation shares, as plain lists."""
    import numpy as np

    flat = {}
    for key in NORMALIZED_KEYS:
        for field in STAT_FIELDS:
            flat[f"{key}/{field}"] = np.asarray(stats[key][field], dtype=np.float64).reshape(-1).tolist()
    return flat


def unflatten_stats(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import numpy as np

    stats: dict[str, dict[str, Any]] = {}
    for name, values in flat.items():
        key, field = name.rsplit("/", 1)
        stats.setdefault(key, {})[field] = np.asarray(values, dtype=np.float64)
    return stats


def federated_stats(per_node: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Combine the nodes' stats into the federation's (count-weighted, as LeRobot merges datasets)."""
    from lerobot.datasets.compute_stats import aggregate_stats

    return flatten_stats(aggregate_stats([unflatten_stats(s) for s in per_node]))


def node_dataset_uri(run: RunConfig, node: NodeConfig) -> tuple[str, tuple[int, int] | None]:
    """Which dataset (and which share of it) a node trains on."""
    if node.dataset_uri:
        return node.dataset_uri, None
    if run.partition_dataset == "embedded":
        return f"embedded:operator-{node.partition_id}", None
    if not run.partition_dataset:
        raise ConfigError("partition-dataset must be 'embedded' or a dataset URI to split among simulated nodes")
    return run.partition_dataset, (node.partition_id, node.num_partitions)


def policy_config_and_data(
    model: str,
    device: str,
    cameras: str,
    camera_map: str,
    dataset_uri: str,
    fps: int,
    heldout_fraction: float,
    seed: int,
    partition: tuple[int, int] | None = None,
    evaluation_only: bool = False,
):
    """The policy's config (only the federation's cameras) and the dataset, checked against it and split:
    what every trainer needs before it builds the policy, a node's and the standalone baseline's alike. With
    `evaluation_only` (the server's dataset) every episode is held out and there is no training set."""
    from app.learning import model as models
    from app.learning.data import load_node_data, resolve_dataset_uri

    resolve_dataset_uri(dataset_uri)  # the cheap checks of the dataset first: no model is fetched for a wrong path
    config = models.load_config(model, device, parse_cameras(cameras, model))
    data = load_node_data(
        dataset_uri,
        models.policy_schema(config, fps),
        lambda meta: models.delta_timestamps(config, meta),
        heldout_fraction,
        seed,
        partition,
        parse_camera_map(camera_map, model),
        evaluation_only=evaluation_only,
    )
    return config, data


@dataclass(frozen=True)
class DatasetSize:
    episodes: int
    frames: int


@dataclass(frozen=True)
class RoundResult:
    arrays: dict  # name -> torch.Tensor, the trainable parameters after local training
    metrics: dict[str, float]


class Processors:
    """LeRobot's pre/post-processors of a policy config for the federation's stats, built once: the stats stay the
    same for a run (building loads the tokenizer from disk)."""

    def __init__(self, config):
        self.config = config
        self._built: tuple[str, tuple] | None = None

    def __call__(self, stats: dict[str, Any]) -> tuple:
        from app.learning import model as models

        key = json.dumps(stats, sort_keys=True)
        if self._built is None or self._built[0] != key:
            self._built = (key, models.build_processors(self.config, unflatten_stats(stats)))
        return self._built[1]


def evaluate_heldout(policy, preprocessor, heldout, run: RunConfig) -> dict[str, float]:
    """The held-out loss of `policy` as loaded, the way every participant measures it."""
    from app.learning.evaluate import evaluate

    result = evaluate(policy, preprocessor, heldout, batch_size=max(8, run.batch_size))
    return {"eval-loss": result.loss, "num-examples": result.samples}


class Learner:
    """A SmolVLA policy bound to one node's dataset: trains and evaluates rounds given global weights and stats."""

    def __init__(self, run: RunConfig, dataset_uri: str, partition: tuple[int, int] | None = None,
                 camera_map: str | None = None):
        from app.learning import model as models
        self.run = run
        self.partition = partition
        self.config, self.data = policy_config_and_data(
            run.model, resolve_device(run.device), run.cameras, run.camera_map if camera_map is None else camera_map,
            dataset_uri, run.fps, run.heldout_fraction, run.seed, partition,
        )
        self.policy = models.build_policy(run.model, self.config)
        self.fingerprint = models.frozen_fingerprint(self.policy)
        self.processors = Processors(self.config)
        self._stats: dict[str, dict[str, Any]] | None = None
        self._optimizer_state: dict | None = None  # AdamW's, between rounds, with keep-optimizer-state

    def local_stats(self) -> dict[str, list[float]]:
        """The normalization stats this participant contributes to the federation's. A node with a dataset of its
        own reports LeRobot's stats of that dataset (free, and what LeRobot and the standalone baseline normalize
        with); a partition of a shared dataset reports its own training frames' stats, since the dataset's cover
        the other partitions too and would hide how the nodes' data differ."""
        from app.learning.data import frame_stats

        if self._stats is None:
            if self.partition is None:
                self._stats = self.data.meta.stats
            else:  # evaluation-only partitions have no training frames: their held-out ones are what they use
                self._stats = frame_stats(self.data.train if self.data.train is not None else self.data.heldout)
        return flatten_stats(self._stats)

    def _prepare(self, arrays: dict, stats: dict[str, Any]):
        from app.learning import model as models
        models.load_trainable_state(self.policy, arrays)
        return self.processors(stats)

    def train_round(self, arrays: dict, stats: dict[str, Any], lr: float, server_round: int,
                    evaluate_first: bool = False, on_step: Callable[[int, float], None] | None = None) -> RoundResult:
        """Train on the global `arrays`; with `evaluate_first`, measure their held-out loss before training moves
        them (one message per round carries both)."""
        from app.learning import model as models
        from app.learning.train import TrainSettings, train

        preprocessor, _ = self._prepare(arrays, stats)
        evaluated = {}
        if evaluate_first:  # on the weights just loaded: evaluation leaves them as they are
            held_out = self._evaluate_loaded(preprocessor)
            evaluated = {RECEIVED_EVAL_LOSS: held_out["eval-loss"], RECEIVED_EVAL_EXAMPLES: held_out["num-examples"]}
        settings = TrainSettings(
            steps=self.run.steps_for(len(self.data.train)),
            batch_size=self.run.batch_size,
            lr=lr,
            lr_min_ratio=1.0,  # the server schedules the learning rate across rounds
            weight_decay=self.run.weight_decay,
            grad_clip_norm=self.run.grad_clip_norm,
            proximal_mu=self.run.proximal_mu,
            seed=self.run.seed + server_round,
        )
        result = train(self.policy, preprocessor, self.data.train, settings, reference=arrays, on_step=on_step,
                       optimizer_state=self._optimizer_state)
        if self.run.keep_optimizer_state:
            self._optimizer_state = result.optimizer_state
        return RoundResult(
            arrays={k: v.to("cpu") for k, v in models.trainable_state(self.policy).items()},
            metrics={
                "train-loss": result.loss,
                "train-loss-last": result.losses[-1],
                "num-examples": result.samples,
                "steps": result.steps,
                "compute-seconds": result.seconds,
                **evaluated,
            },
        )

    def evaluate(self, arrays: dict, stats: dict[str, Any]) -> dict[str, float]:
        preprocessor, _ = self._prepare(arrays, stats)
        return self._evaluate_loaded(preprocessor)

    def _evaluate_loaded(self, preprocessor) -> dict[str, float]:
        return evaluate_heldout(self.policy, preprocessor, self.data.heldout, self.run)


@dataclass(frozen=True)
class DatasetCheck:
    """A dataset against the federation's policy settings: how it fits, its size, and whether its frames read."""

    fit: SchemaFit
    size: DatasetSize
    frames_problem: str = ""  # why the first frame of its first or last episode cannot be read; "" if it can

    @property
    def ok(self) -> bool:
        return self.fit.ok and not self.frames_problem

    def error(self) -> str:
        return self.fit.error() if not self.fit.ok else self.frames_problem


def inspect_dataset(dataset_uri: str, model: str, fps: int, cameras: str, camera_map: str) -> DatasetCheck:
    """Check a dataset for the policy of `model` with the federation's `fps`, `cameras` and this dataset's
    `camera_map` (run-config values): every key, the settings that would fix a mismatch, and, if it fits, that its
    frames decode. Raises a UserError only if the dataset cannot be opened at all."""
    from app.learning import model as models
    from app.learning.data import open_metadata, probe_frames, resolve_dataset_uri, schema_fit
    from app.common.errors import DatasetError

    ref = resolve_dataset_uri(dataset_uri)  # a path that is not there, a file that is no dataset: before any fetch
    config = models.load_config(model, cameras=parse_cameras(cameras, model))
    meta = open_metadata(ref)
    fit = schema_fit(meta, models.policy_schema(config, fps), dataset_uri, parse_camera_map(camera_map, model))
    problem = ""
    if fit.ok:
        try:
            probe_frames(ref, meta)
        except DatasetError as exc:
            problem = str(exc)
    return DatasetCheck(fit, DatasetSize(meta.total_episodes, meta.total_frames), problem)


def check_node_dataset(dataset_uri: str, model: str, fps: int, cameras: str, camera_map: str) -> DatasetSize:
    """What an operator's SuperNode checks before it joins (`inspect_dataset`, as `fedvla check` does). Returns
    the dataset's size; raises a DatasetError naming every problem and its fix otherwise."""
    from app.common.errors import DatasetError

    check = inspect_dataset(dataset_uri, model, fps, cameras, camera_map)
    if not check.ok:
        raise DatasetError(check.error())
    log.info("node_dataset_ok", dataset=dataset_uri, episodes=check.size.episodes, frames=check.size.frames, fps=fps)
    return check.size
