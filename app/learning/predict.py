"""A checkpoint on a recorded episode: the actions it would have taken against those the operator recorded.

For every frame of the episode the policy sees the recorded observation (cameras, state, task) and predicts its
action chunk; the first action of the chunk is compared with the action recorded at that frame, in the dataset's
own units (the checkpoint's post-processor undoes the normalization). A baseline (by default the base model the
run started from, with the checkpoint's normalization) is scored the same way, so the number says what
fine-tuning changed. Flow matching starts from random noise: it is drawn from a fixed seed, so a checkpoint
scores the same every time.

    fedvla predict outputs/<ts>/models/checkpoint_round_3 --dataset embedded:operator-0 --episode 0
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from app.common.errors import UserError
from app.common.telemetry import get_logger

log = get_logger(__name__)
PREDICT_SEED = 1234


@dataclass(frozen=True)
class EpisodeScore:
    """Per-joint mean absolute error of one policy's actions on one episode."""

    policy: str
    joint_error: dict[str, float]
    predicted: list[list[float]]  # frame -> joint

    @property
    def mean_error(self) -> float:
        return sum(self.joint_error.values()) / len(self.joint_error)


@dataclass(frozen=True)
class Prediction:
    dataset: str
    episode: int
    frames: int
    recorded: list[list[float]]
    scores: list[EpisodeScore]  # the checkpoint first, then the baseline if any
    chart: Path | None = None


def base_model_of(checkpoint: Path) -> str | None:
    """The `model` a federated checkpoint was trained from, read from its run's run_config.json."""
    run_config = checkpoint.parent.parent / "run_config.json"
    if not run_config.is_file():
        return None
    return json.loads(run_config.read_text()).get("run-config", {}).get("model")


def _episode_frames(dataset_uri: str, episode: int, camera_map: str, model: str):
    from app.common.config import parse_camera_map
    from app.learning.data import open_dataset, open_metadata, rename_cameras, resolve_dataset_uri

    ref = resolve_dataset_uri(dataset_uri)
    meta = open_metadata(ref)
    if not 0 <= episode < meta.total_episodes:
        raise UserError(f"dataset {dataset_uri!r} has episodes 0..{meta.total_episodes - 1}, not {episode}")
    frames = rename_cameras(open_dataset(ref, [episode], None), parse_camera_map(camera_map, model))
    names = meta.features["action"].get("names") or [f"joint_{i}" for i in range(meta.features["action"]["shape"][0])]
    return frames, list(names)


def _score(label: str, policy, preprocessor, postprocessor, frames, batch_size: int) -> list[list[float]]:
    import torch

    from app.learning.train import make_loader

    predicted = []
    policy.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(PREDICT_SEED)
        for batch in make_loader(frames, batch_size, PREDICT_SEED, shuffle=False):
            inputs = preprocessor({k: v for k, v in batch.items() if k != "action"})
            chunk = policy.predict_action_chunk(inputs)  # (batch, chunk, action)
            predicted += postprocessor(chunk[:, 0]).tolist()
    log.info("episode_predicted", policy=label, frames=len(predicted))
    return predicted


def predict(checkpoint: Path, dataset_uri: str, episode: int = 0, baseline: str | None = "auto",
            camera_map: str = "auto", chart: Path | None = None, device: str = "cpu",
            batch_size: int = 8) -> Prediction:
    """Score `checkpoint` (and `baseline`: a model id or checkpoint; "auto": the run's base model; None: none) on
    `episode` of `dataset_uri`; draw predicted vs recorded joint trajectories into `chart` if given."""
    from app.learning import model as models
    from app.learning.checkpoint import load_checkpoint

    policy, preprocessor, postprocessor = load_checkpoint(checkpoint, device)
    base = base_model_of(checkpoint) if baseline == "auto" else baseline
    frames, joints = _episode_frames(dataset_uri, episode, camera_map, base or "")
    recorded = [frames[i]["action"].tolist() for i in range(len(frames))]
    runs = [(checkpoint.name, policy)]
    if base:
        runs.append((f"{base} (base)", models.build_policy(base, policy.config)))
    scores = []
    for label, candidate in runs:
        predicted = _score(label, candidate, preprocessor, postprocessor, frames, batch_size)
        error = {joint: sum(abs(p[j] - r[j]) for p, r in zip(predicted, recorded, strict=True)) / len(recorded)
                 for j, joint in enumerate(joints)}
        scores.append(EpisodeScore(label, error, predicted))
    result = Prediction(dataset_uri, episode, len(recorded), recorded, scores, chart)
    if chart is not None:
        draw(result, joints, chart)
    return result


def draw(result: Prediction, joints: list[str], path: Path) -> Path:
    """One panel per joint: the recorded trajectory and each policy's predicted one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(joints) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
    for j, (joint, ax) in enumerate(zip(joints, axes.flat)):
        ax.plot([r[j] for r in result.recorded], label="recorded", color="black", linewidth=2)
        for score in result.scores:
            ax.plot([p[j] for p in score.predicted], label=f"{score.policy} (MAE {score.joint_error[joint]:.3g})")
        ax.set_title(joint, fontsize=9)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(joints):]:
        ax.axis("off")
    fig.suptitle(f"{result.dataset} episode {result.episode}: predicted vs recorded actions", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
