"""Test helpers: small LeRobot datasets with deliberately chosen (often wrong) schemas."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.learning.embedded.datasets import so100_features


def write_dataset_with(
    root: Path, drop: tuple[str, ...] = (), action_dim: int = 6, fps: int = 30, rename: dict[str, str] | None = None
) -> Path:
    """A 2-episode SO-100-like dataset, written with LeRobot, minus the features in `drop`, cameras renamed by
    `rename` (short names: {"front": "top"})."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    prefix = "observation.images."
    features = {}
    for key, spec in so100_features(use_videos=False).items():
        if key in drop:
            continue
        if key.startswith(prefix):
            key = prefix + (rename or {}).get(key.removeprefix(prefix), key.removeprefix(prefix))
        features[key] = spec
    if "action" in features:
        features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": [f"j{i}" for i in range(action_dim)]}
    dataset = LeRobotDataset.create("test/bad", fps=fps, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    for _ in range(2):
        for _ in range(5):
            frame = {"task": "pick the red cube and place it in the bowl"}
            for key, spec in features.items():
                if spec["dtype"] == "image":
                    frame[key] = rng.integers(0, 255, size=spec["shape"], dtype=np.uint8)
                else:
                    frame[key] = rng.normal(size=spec["shape"]).astype(np.float32)
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    return root
