"""Weights & Biases experiment tracking for federated runs (`use-wandb = true`), on the server only.

Each round logs the averaged losses, the server eval loss, timing and traffic, and each node's own losses under
`client/<name>/...`. The API key comes from WANDB_API_KEY (or `wandb login`) and is never logged;
WANDB_MODE=offline keeps the run on disk for a later `wandb sync`. WANDB_PROJECT (default "fedvla") and
WANDB_ENTITY choose where it goes.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.common.telemetry import get_logger

log = get_logger(__name__)


class WandbTracker:
    def __init__(self, run_dir: Path, run_config: dict, name: str):
        import wandb

        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "fedvla"),
            entity=os.environ.get("WANDB_ENTITY") or None,
            name=name,
            config=run_config,
            dir=str(run_dir),
            job_type="federated-training",
        )
        log.info("wandb_started", url=self.url, mode=os.environ.get("WANDB_MODE", "online"))

    @property
    def url(self) -> str:
        """The run's page, or for an offline run the directory that `wandb sync` uploads."""
        return self._run.url or f"offline: wandb sync {Path(self._run.dir).parent}"

    def log_round(self, summary: dict) -> None:
        metrics = {
            f"federation/{key}": value
            for key, value in summary.items()
            if key not in ("round", "nodes", "dropped") and value is not None
        }
        metrics["federation/dropped-replies"] = len(summary.get("dropped", []))
        for name, node in summary.get("nodes", {}).items():
            metrics |= {f"client/{name}/{key}": value for key, value in node.items() if value is not None}
        self._run.log(metrics, step=summary["round"])

    def log_initial(self, server_eval_loss: float, server_round: int = 0) -> None:
        self._run.log({"federation/server-eval-loss": server_eval_loss}, step=server_round)

    def finish(self) -> None:
        import wandb

        self._run.finish()
        # The ServerApp process ends soon after: wait for W&B's service to write out (or upload) everything.
        wandb.teardown()
