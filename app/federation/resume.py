"""Carrying a run on after its ServerApp or its SuperLink died, without losing or repeating a completed round.

After every completed round the ServerApp saves `server/state/round_<N>/` in the run's outputs directory: the
global trainable arrays (arrays.safetensors), the server optimizer's state if the run has one
(server_optimizer.safetensors: momentum, moments) and state.json (the round, the federation's normalization stats,
the early-stopping state), sealed with a manifest like a checkpoint (app.learning.checkpoint), then removes older states. At the
run's end it writes `server/state/finished.json`.

A run submitted again with the same run-config and `resume-from = "latest"` (the default) looks for the newest run
directory under output-dir that has the same run-config and did not finish, and carries on in it: from the round
after its last saved state, with its weights, normalization, learning-rate position (the schedule is a function of
the round) and early-stopping state; the metric history already on disk is kept and extended. If no such run
exists it starts afresh. A damaged state is said in the log and the one before it is used.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.common.files import write_json_atomic
from app.learning.checkpoint import CheckpointError, seal, verify_checkpoint, write_directory_atomic
from app.common.telemetry import get_logger

log = get_logger(__name__)

LATEST = "latest"
STATE_DIR = Path("server") / "state"
FINISHED = "finished.json"


@dataclass(frozen=True)
class RoundState:
    round: int
    norm_stats: dict[str, list[float]]
    best_loss: float  # early stopping: the best server eval loss so far, and evaluations since it improved
    stale: int


def _round_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (run_dir / STATE_DIR).glob("round_*"):
        suffix = path.name.removeprefix("round_")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


SERVER_OPTIMIZER_FILE = "server_optimizer.safetensors"


def save_round_state(run_dir: Path, state: RoundState, arrays: Mapping[str, Any],
                     server_optimizer: Mapping[str, Any] | None = None) -> Path:
    """Seal round `state.round`'s state (global arrays as torch tensors; the server optimizer's as NumPy arrays)
    beside the run's outputs, then drop the older ones."""
    import numpy as np
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file

    from app.learning.model import tensors_digest

    def fill(directory: Path) -> None:
        save_file({k: v.contiguous() for k, v in arrays.items()}, str(directory / "arrays.safetensors"))
        if server_optimizer:
            save_numpy({k: np.ascontiguousarray(v) for k, v in server_optimizer.items()},
                       str(directory / SERVER_OPTIMIZER_FILE))
        (directory / "state.json").write_text(json.dumps(asdict(state), allow_nan=True))
        seal(directory)

    path = write_directory_atomic(run_dir / STATE_DIR / f"round_{state.round}", fill)
    # what a continued run must start from; it logs the digest of what it loaded (run_continued)
    log.info("round_state_saved", round=state.round, weights_digest=tensors_digest(arrays))
    for server_round, older in _round_dirs(run_dir):
        if server_round < state.round:
            shutil.rmtree(older, ignore_errors=True)
    return path


def load_round_state(run_dir: Path) -> tuple[RoundState, dict, dict] | None:
    """The newest state of the run that verifies (a damaged one is logged and skipped): the state, the global
    arrays and the server optimizer's arrays ({} without one); or None."""
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file

    for _, path in reversed(_round_dirs(run_dir)):
        try:
            verify_checkpoint(path)
            state = RoundState(**json.loads((path / "state.json").read_text()))
            optimizer_file = path / SERVER_OPTIMIZER_FILE
            optimizer = load_numpy(str(optimizer_file)) if optimizer_file.is_file() else {}
            return state, load_file(str(path / "arrays.safetensors")), optimizer
        except (CheckpointError, ValueError, TypeError, OSError) as exc:
            log.error("round_state_corrupt", path=str(path), why=str(exc))
    return None


def mark_finished(run_dir: Path) -> None:
    write_json_atomic(run_dir / STATE_DIR / FINISHED, {"finished": True})


def find_unfinished_run(output_dir: Path, run_config: Mapping[str, Any]) -> Path | None:
    """The newest run directory under `output_dir` started with this run-config (resume-from aside) that has a
    saved round and has not finished."""
    wanted = {k: v for k, v in run_config.items() if k != "resume-from"}
    for config_file in sorted(output_dir.glob("*/run_config.json"), reverse=True):
        run_dir = config_file.parent
        try:
            saved = json.loads(config_file.read_text())["run-config"]
        except (ValueError, KeyError, OSError):
            continue
        if ({k: v for k, v in saved.items() if k != "resume-from"} == wanted
                and not (run_dir / STATE_DIR / FINISHED).exists() and _round_dirs(run_dir)):
            return run_dir
    return None
