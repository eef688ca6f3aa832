"""`fedvla train`: standalone fine-tuning of one dataset (the centralized baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.args import positive_float, positive_int
from app.common.errors import UserError


def add_parser(sub) -> None:
    from app.learning.model import DEFAULT_MODEL

    p = sub.add_parser("train", help="standalone fine-tuning of one dataset (the centralized baseline)")
    p.add_argument("--embedded", action="store_true",
                   help="offline default: tiny embedded SmolVLA on embedded:operator-0, lr 1e-3")
    p.add_argument("--model", help=f"Hub id, checkpoint directory or embedded:tiny (default {DEFAULT_MODEL})")
    p.add_argument("--dataset", help="hf:<repo_id>, a local LeRobot dataset directory, or embedded:operator-<i>")
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default 1e-4; 1e-3 with --embedded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=positive_int, default=50, help="held-out evaluation interval in steps")
    p.add_argument("--heldout-fraction", type=float, default=0.2)
    p.add_argument("--fps", type=positive_int, default=30, help="frame rate the policy expects")
    p.add_argument("--cameras", default="auto", help="policy cameras to use, e.g. camera1,camera2; '' = all "
                   "(default auto: camera1,camera2 for lerobot/smolvla_base, all for other models)")
    p.add_argument("--camera-map", default="auto", help="dataset camera names -> the policy's, e.g. "
                   "top=camera1,wrist=camera2 (default auto: that map for lerobot/smolvla_base, none otherwise)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--output-dir", type=Path, default=Path("outputs"))
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from app.common.config import EMBEDDED_OVERRIDES, RunConfig, parse_camera_map
    from app.learning.standalone import StandaloneConfig, run_standalone

    defaults = RunConfig.from_mapping(EMBEDDED_OVERRIDES if args.embedded else {})
    if not args.embedded and not args.dataset:
        raise UserError("--dataset is required (hf:<repo_id> or a local path), or pass --embedded for the offline demo")
    model = args.model or defaults.model
    dataset = args.dataset or "embedded:operator-0"
    lr = args.lr or defaults.lr
    parse_camera_map(args.camera_map, model, "--camera-map")
    if not 0 < args.heldout_fraction < 1:
        raise UserError(f"--heldout-fraction must be between 0 and 1, got {args.heldout_fraction}")
    cfg = StandaloneConfig(
        model=model, dataset=dataset, steps=args.steps, batch_size=args.batch_size, lr=lr, seed=args.seed,
        heldout_fraction=args.heldout_fraction, eval_every=args.eval_every, fps=args.fps, device=args.device,
        output_dir=args.output_dir, cameras=args.cameras, camera_map=args.camera_map,
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:
        task = bar.add_task("train", total=cfg.steps, loss=float("nan"))
        summary = run_standalone(cfg, progress=lambda done, total, loss: bar.update(task, completed=done, loss=loss))
    out = Console(soft_wrap=True)  # paths stay whole, to be copied
    out.print(f"[bold]Standalone training[/bold]: {cfg.steps} steps of {cfg.model} on {cfg.dataset}")
    out.print(f"  held-out loss  initial {summary.initial_heldout_loss:.4f}  ->  final {summary.final_heldout_loss:.4f}"
              f"  ({summary.final_heldout_loss / summary.initial_heldout_loss:.0%} of initial)")
    out.print(f"  training time  {summary.seconds:.1f} s")
    out.print(f"  checkpoint     {summary.checkpoint}")
    out.print(f"  outputs        {summary.run_dir}")
    return 0
