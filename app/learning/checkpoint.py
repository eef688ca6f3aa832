"""Checkpoints in LeRobot's `save_pretrained` layout, written atomically.

A checkpoint directory holds what `SmolVLAPolicy.from_pretrained(dir)` and
`make_pre_post_processors(config, pretrained_path=dir)` need: config.json, model.safetensors and the processor
pipelines with their normalization stats (so a reload normalizes exactly as training did; see lerobot#1763),
plus a model card README.md, metrics.json and manifest.json (every file's size and SHA-256). It is built in a
hidden temporary directory beside the target, every file and the directory are fsynced, and then it is renamed
into place, so a crash or a power cut leaves either the previous checkpoint or the new one, never half of one. A
checkpoint is loaded only after its files match its manifest; a corrupt one is named as such and, when resuming,
the previous checkpoint is used instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.common.errors import UserError
from app.common.files import write_json_atomic
from app.common.telemetry import get_logger

log = get_logger(__name__)
MANIFEST = "manifest.json"


class CheckpointError(UserError):
    """A checkpoint is incomplete or its files do not match its manifest."""


def _retired(target: Path) -> Path:
    return target.with_name(f".{target.name}-retired")


def restore_interrupted(target: Path) -> None:
    """Replacing a directory takes two renames (the old one aside, the new one into place): a process killed between
    them left no `target`, and the old version, complete, aside. Put it back, so that neither a reader nor the next
    save (which would otherwise delete it) loses it."""
    retired = _retired(target)
    if retired.is_dir() and not target.exists():
        os.replace(retired, target)
        _fsync(target.parent)
        log.warning("checkpoint_restored", checkpoint=str(target), why="a save that was replacing it was interrupted")


def write_directory_atomic(target: Path, fill: Callable[[Path], None]) -> Path:
    """Create `target` by calling `fill(tmpdir)` and renaming; an existing `target` is replaced only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(staging)
        if target.exists():
            retired = _retired(target)
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
        _fsync(target.parent)  # the rename itself survives a power cut
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(directory: Path) -> None:
    """fsync every file, then write the manifest (sizes and SHA-256) and fsync the directory: written last, the
    manifest vouches for files that are on disk."""
    for path in _files(directory):
        _fsync(path)
    manifest = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in _files(directory)}
    write_json_atomic(directory / MANIFEST, {"files": manifest})
    _fsync(directory)


def verify_checkpoint(directory: Path) -> None:
    """Raise CheckpointError naming the first file that is missing, has another size or other contents."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{str(directory)!r} has no {MANIFEST}: it is incomplete or not a checkpoint")
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{str(directory)!r}: {MANIFEST} is unreadable ({exc})") from exc
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{str(directory)!r} is corrupt: {name} is missing")
        if path.stat().st_size != expected["bytes"]:
            raise CheckpointError(f"{str(directory)!r} is corrupt: {name} has {path.stat().st_size} bytes, "
                                  f"the manifest says {expected['bytes']}")
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{str(directory)!r} is corrupt: {name} does not match its SHA-256")


def usable_checkpoint(directory: Path) -> Path:
    """`directory` if it verifies; otherwise, said in the log, the newest earlier checkpoint beside it that does."""
    restore_interrupted(directory)
    try:
        verify_checkpoint(directory)
        return directory
    except CheckpointError as exc:
        why = str(exc)
    log.error("checkpoint_corrupt", checkpoint=str(directory), why=why)
    own_round = _round_of(directory)
    for server_round, candidate in reversed(list_checkpoints(directory.parent)):
        if own_round is not None and server_round >= own_round:
            continue
        try:
            verify_checkpoint(candidate)
        except CheckpointError as exc:
            log.error("checkpoint_corrupt", checkpoint=str(candidate), why=str(exc))
            continue
        log.warning("checkpoint_fallback", corrupt=str(directory), using=str(candidate))
        return candidate
    raise CheckpointError(f"{why}; no earlier checkpoint beside it verifies either: resume from another run's "
                          "checkpoint or start afresh without resume-from")


def save_checkpoint(
    target: Path,
    policy,
    preprocessor,
    postprocessor,
    metrics: dict[str, Any],
    model_card: str,
    files: dict[str, Path] | None = None,
) -> Path:
    """Write a checkpoint atomically: the policy, its processors, the model card (README.md), metrics.json and
    `files` (name in the checkpoint -> a file to copy, e.g. the card's loss chart), sealed with a manifest."""
    def fill(directory: Path) -> None:
        policy.save_pretrained(directory)
        preprocessor.save_pretrained(directory)
        postprocessor.save_pretrained(directory)
        (directory / "README.md").write_text(model_card, encoding="utf-8")
        write_json_atomic(directory / "metrics.json", metrics)
        for name, source in (files or {}).items():
            shutil.copyfile(source, directory / name)
        seal(directory)

    return write_directory_atomic(target, fill)


def load_checkpoint(directory: Path, device: str = "cpu"):
    """(policy, preprocessor, postprocessor) exactly as saved, once the files match the manifest: LeRobot's own
    loaders, nothing else."""
    verify_checkpoint(directory)
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    config = PreTrainedConfig.from_pretrained(directory)
    config.device = device
    policy = SmolVLAPolicy.from_pretrained(directory, config=config)
    preprocessor, postprocessor = make_pre_post_processors(
        config, pretrained_path=str(directory), preprocessor_overrides={"device_processor": {"device": device}}
    )
    return policy, preprocessor, postprocessor


def checkpoint_round(directory: Path) -> int:
    """The federated round a checkpoint was written after (from its metrics.json)."""
    metrics = directory / "metrics.json"
    if not metrics.is_file() or "round" not in (data := json.loads(metrics.read_text())):
        raise UserError(f"{str(directory)!r} is not a checkpoint of a federated run (no round in metrics.json)")
    return int(data["round"])


def list_checkpoints(models_dir: Path) -> list[tuple[int, Path]]:
    """(round, path) of the complete checkpoints (sealed with a manifest) under `models_dir`, oldest first."""
    found = [(_round_of(path), path) for path in models_dir.glob("checkpoint_round_*")]
    return sorted((n, path) for n, path in found if n is not None and (path / MANIFEST).is_file())


def latest_checkpoint(models_dir: Path) -> Path | None:
    """The newest complete checkpoint under `models_dir`, or None."""
    checkpoints = list_checkpoints(models_dir)
    return checkpoints[-1][1] if checkpoints else None


def _round_of(path: Path) -> int | None:
    suffix = path.name.removeprefix("checkpoint_round_")
    return int(suffix) if path.name.startswith("checkpoint_round_") and suffix.isdigit() else None


LOSS_CHART = "loss_chart.png"  # in a checkpoint: the card shows it, on the Hub as in a clone


def render_model_card(title: str, summary: str, facts: dict[str, Any], metrics: dict[str, Any],
                      base_model: str = "", datasets: Sequence[str] = (), chart: bool = False,
                      repo_id: str = "") -> str:
    """A Hugging Face model card: YAML front matter for the Hub (its base model and datasets by Hub id, when they
    have one), what the checkpoint is and how it was made, its loss chart, and a loading snippet."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    metric_rows = "\n".join(
        f"| {key} | {value:.6g} |" if isinstance(value, float) else f"| {key} | {value} |" for key, value in metrics.items()
    )
    front = ["library_name: lerobot", "pipeline_tag: robotics"]
    if base_model:
        front.append(f"base_model: {base_model}")
    if datasets:
        front += ["datasets:", *(f"- {d}" for d in datasets)]
    front += ["tags:", *(f"- {t}" for t in ("smolvla", "lerobot", "federated-learning", "flower", "so100"))]
    front_matter = "\n".join(front)
    chart_section = f"\n![held-out loss by round]({LOSS_CHART})\n" if chart else ""
    return f"""---
{front_matter}
---

# {title}

{summary}

## How it was made

| setting | value |
|---|---|
{rows}

## Metrics

| metric | value |
|---|---|
{metric_rows}
{chart_section}
## Use

```python
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

checkpoint = "{repo_id or 'path/to/this/checkpoint'}"  # a Hub repo id or a local directory
policy = SmolVLAPolicy.from_pretrained(checkpoint)
preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=checkpoint)
```
"""
