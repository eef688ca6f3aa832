"""Checkpoints in LeRobot's `save_pretrained` layout, written atomically.

A checkpoint directory holds what `SmolVLAPolicy.from_pretrained(dir)` and
`make_pre_post_processors(config, pretrained_path=dir)` need: config.json, model.safetensors and the processor
pipelines with their normalization stats (so a reload normalizes exactly as training did; see lerobot#1763),
plus a model card README.md and metrics.json. It is built in a hidden temporary directory beside the target and
renamed into place, so a crash leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import UserError


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_directory_atomic(target: Path, fill: Callable[[Path], None]) -> Path:
    """Create `target` by calling `fill(tmpdir)` and renaming; an existing `target` is replaced only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(staging)
        if target.exists():
            retired = target.with_name(f".{target.name}-retired")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def save_checkpoint(
    target: Path,
    policy,
    preprocessor,
    postprocessor,
    metrics: dict[str, Any],
    model_card: str,
) -> Path:
    def fill(directory: Path) -> None:
        policy.save_pretrained(directory)
        preprocessor.save_pretrained(directory)
        postprocessor.save_pretrained(directory)
        (directory / "README.md").write_text(model_card, encoding="utf-8")
        write_json_atomic(directory / "metrics.json", metrics)

    return write_directory_atomic(target, fill)


def load_checkpoint(directory: Path, device: str = "cpu"):
    """(policy, preprocessor, postprocessor) exactly as saved: LeRobot's own loaders, nothing else."""
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
    """(round, path) of the complete checkpoints under `models_dir`, oldest first."""
    found = []
    for path in models_dir.glob("checkpoint_round_*"):
        suffix = path.name.removeprefix("checkpoint_round_")
        if suffix.isdigit() and (path / "model.safetensors").is_file():
            found.append((int(suffix), path))
    return sorted(found)


def render_model_card(title: str, summary: str, facts: dict[str, Any], metrics: dict[str, Any]) -> str:
    """A Hugging Face model card: YAML front matter for the Hub, then what the checkpoint is and how it was made."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    metric_rows = "\n".join(
        f"| {key} | {value:.6g} |" if isinstance(value, float) else f"| {key} | {value} |" for key, value in metrics.items()
    )
    return f"""---
library_name: lerobot
pipeline_tag: robotics
tags:
- smolvla
- lerobot
- federated-learning
- flower
- so100
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

## Use

```python
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.policies.factory import make_pre_post_processors

policy = SmolVLAPolicy.from_pretrained("<this directory or repo id>")
preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path="<same>")
```
"""
