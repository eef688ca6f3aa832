"""The offline default: a tiny SmolVLA base checkpoint and synthetic SO-100 datasets, generated on first use.

Everything is derived from one seed, written once into a cache directory (`$FEDVLA_HOME/embedded/...`, default
`~/.cache/fedvla`) and reused afterwards. Generation happens in a temporary directory that is renamed into place,
under a file lock, so two SuperNodes starting together on one machine neither race nor see half a dataset. What
writing prints (hundreds of lines from the video encoder) goes to `$FEDVLA_HOME/logs/embedded.log`, not the console.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from app.common.config import fedvla_home
from app.common.telemetry import get_logger, output_to

log = get_logger(__name__)

FORMAT_VERSION = 1  # bump when the generated content changes, so stale caches are not reused
DEFAULT_SEED = 0
EPISODES_PER_OPERATOR = 16
SERVER_EVAL_EPISODES = 6
FRAMES_PER_EPISODE = 40


@dataclass(frozen=True)
class Embedded:
    """Paths of the embedded artifacts generated from one seed."""

    root: Path

    @property
    def backbone(self) -> Path:
        return self.root / "backbone"

    @property
    def base_model(self) -> Path:
        return self.root / "smolvla_tiny_base"

    def operator_dataset(self, operator: int) -> Path:
        return self.root / "datasets" / f"operator_{operator}"

    @property
    def server_eval_dataset(self) -> Path:
        return self.root / "datasets" / "server_eval"


def embedded(seed: int = DEFAULT_SEED) -> Embedded:
    return Embedded(fedvla_home() / "embedded" / f"v{FORMAT_VERSION}-seed{seed}")


def _materialize(target: Path, build) -> Path:
    """Run `build(tmpdir)` once for `target` and rename the result into place; reuse it afterwards."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():  # another process finished it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        output = output_log()
        try:
            # LeRobot encodes the datasets' videos through ffmpeg, whose SVT-AV1 encoder prints hundreds of lines
            # straight to file descriptor 2; LeRobot and `datasets` add prints and progress bars of their own.
            with output_to(output):
                build(tmp / "out")
            os.replace(tmp / "out", target)
        except Exception:
            log.error("embedded_artifact_failed", path=str(target), output=str(output))
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.debug("embedded_artifact_written", path=str(target))
    return target


def output_log() -> Path:
    return fedvla_home() / "logs" / "embedded.log"


def ensure_base_model(seed: int = DEFAULT_SEED) -> Path:
    """The tiny SmolVLA base checkpoint (random weights from `seed`), the offline stand-in for smolvla_base."""
    paths = embedded(seed)

    def build_backbone(out: Path) -> None:
        from app.learning.embedded.backbone import write_tiny_backbone

        write_tiny_backbone(out)

    _materialize(paths.backbone, build_backbone)

    def build_base(out: Path) -> None:
        from app.learning.embedded.tiny_policy import write_tiny_base_policy

        write_tiny_base_policy(out, backbone=paths.backbone, seed=seed)

    return _materialize(paths.base_model, build_base)


def ensure_operator_dataset(operator: int, seed: int = DEFAULT_SEED) -> Path:
    """Operator `operator`'s recordings: one task family of its own, so operators are non-IID."""
    from app.learning.embedded.datasets import write_dataset

    return _materialize(
        embedded(seed).operator_dataset(operator),
        lambda out: write_dataset(
            out,
            repo_id=f"fedvla/embedded_operator_{operator}",
            task_families=[operator],
            num_episodes=EPISODES_PER_OPERATOR,
            frames_per_episode=FRAMES_PER_EPISODE,
            seed=seed * 1000 + operator,
        ),
    )


def ensure_server_eval_dataset(seed: int = DEFAULT_SEED, num_families: int = 4) -> Path:
    """Recordings kept for server-side evaluation of the global model: SERVER_EVAL_EPISODES episodes of families
    0, 1, .., num_families - 1 in turn, so every family has one at least; the server evaluates on all of them."""
    from app.learning.embedded.datasets import write_dataset

    return _materialize(
        embedded(seed).server_eval_dataset,
        lambda out: write_dataset(
            out,
            repo_id="fedvla/embedded_server_eval",
            task_families=list(range(num_families)),
            num_episodes=SERVER_EVAL_EPISODES,
            frames_per_episode=FRAMES_PER_EPISODE,
            seed=seed * 1000 + 999,
        ),
    )
