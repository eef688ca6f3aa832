"""Centralized (standalone) training on one dataset: the baseline a federated run is compared with.

Same data, model, training and evaluation code as a federated node; no Flower. Writes
`outputs/<timestamp>/` with train.log, metrics.json, loss_chart.png and models/final/ (a LeRobot checkpoint).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from app.common.telemetry import configure_logging, get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class StandaloneConfig:
    model: str
    dataset: str
    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    heldout_fraction: float = 0.2
    eval_every: int = 50
    fps: int = 30
    device: str = "auto"
    output_dir: Path = Path("outputs")
    warmup_steps: int = 10
    cameras: str = "auto"  # the policy cameras to use ("" = all of the model's; auto: see config.CAMERA_PRESETS)
    camera_map: str = "auto"  # dataset camera names -> the policy's, e.g. top=camera1,wrist=camera2


@dataclass(frozen=True)
class StandaloneSummary:
    run_dir: Path
    checkpoint: Path
    initial_heldout_loss: float
    final_heldout_loss: float
    train_loss_curve: list[float]
    eval_curve: list[tuple[int, float]]
    seconds: float


def run_standalone(cfg: StandaloneConfig, progress=None) -> StandaloneSummary:
    """Validate everything, train for cfg.steps, evaluate every cfg.eval_every steps, save the final checkpoint."""
    from app.learning import model as models
    from app.learning.checkpoint import render_model_card, save_checkpoint
    from app.common.config import resolve_device
    from app.learning.data import public_name
    from app.learning.evaluate import evaluate
    from app.learning.learner import policy_config_and_data
    from app.common.files import write_json_atomic
    from app.learning.report import line_chart, new_run_dir
    from app.learning.train import TrainSettings, train

    config, data = policy_config_and_data(
        cfg.model, resolve_device(cfg.device), cfg.cameras, cfg.camera_map, cfg.dataset, cfg.fps,
        cfg.heldout_fraction, cfg.seed,
    )
    run_dir = new_run_dir(cfg.output_dir)
    configure_logging(log_file=run_dir / "train.log", console=progress is None)
    log.info("standalone_start", run_dir=str(run_dir), **{k: str(v) for k, v in asdict(cfg).items()})
    policy = models.build_policy(cfg.model, config)
    preprocessor, postprocessor = models.build_processors(config, data.meta.stats)

    eval_curve = [(0, evaluate(policy, preprocessor, data.heldout).loss)]
    log.info("heldout_eval", step=0, loss=eval_curve[0][1])
    settings = TrainSettings(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed
    )

    def on_step(step: int, loss: float) -> None:
        done = step + 1
        if progress is not None:
            progress(done, cfg.steps, loss)
        if done % cfg.eval_every == 0 or done == cfg.steps:
            eval_curve.append((done, evaluate(policy, preprocessor, data.heldout).loss))
            log.info("heldout_eval", step=done, loss=eval_curve[-1][1], train_loss=loss)

    result = train(policy, preprocessor, data.train, settings, on_step=on_step)
    losses, seconds = result.losses, result.seconds

    # What the checkpoint says of its making may be published: the model and the dataset by their public names, no
    # path of this machine (the run directory's own metrics.json keeps them).
    public = {"model": models.public_model_name(cfg.model), "dataset": public_name(cfg.dataset)}
    public_config = {**{k: str(v) for k, v in asdict(cfg).items() if k != "output_dir"}, **public}
    metrics = {
        "initial_heldout_loss": eval_curve[0][1],
        "final_heldout_loss": eval_curve[-1][1],
        "train_loss": losses,
        "heldout_loss": [{"step": s, "loss": v} for s, v in eval_curve],
        "train_seconds": seconds,
        "config": {k: str(v) for k, v in asdict(cfg).items()},
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    line_chart(
        run_dir / "loss_chart.png",
        {"train (per step)": (list(range(1, len(losses) + 1)), losses), "held-out": tuple(zip(*eval_curve))},
        title=f"Standalone SmolVLA training on {cfg.dataset}",
        xlabel="step",
        ylabel="policy loss",
    )
    checkpoint = save_checkpoint(
        run_dir / "models" / "final",
        policy,
        preprocessor,
        postprocessor,
        metrics={**{k: v for k, v in metrics.items() if k != "train_loss"}, "config": public_config},
        model_card=render_model_card(
            "SmolVLA fine-tuned (standalone baseline)",
            "Centralized fine-tuning of SmolVLA on one LeRobot dataset; the baseline for federated runs.",
            {"base model": public["model"], "dataset": public["dataset"], "steps": cfg.steps,
             "batch size": cfg.batch_size, "learning rate": cfg.lr, "seed": cfg.seed},
            {"initial held-out loss": eval_curve[0][1], "final held-out loss": eval_curve[-1][1]},
        ),
    )
    log.info("standalone_done", checkpoint=str(checkpoint), final_heldout_loss=eval_curve[-1][1])
    return StandaloneSummary(run_dir, checkpoint, eval_curve[0][1], eval_curve[-1][1], losses, eval_curve, seconds)

