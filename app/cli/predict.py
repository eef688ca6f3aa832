"""`fedvla predict`: a checkpoint on a recorded episode: per-joint action error and a chart."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.common.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="a checkpoint on a recorded episode: per-joint action error and a chart")
    p.add_argument("checkpoint", type=Path, help="e.g. outputs/<timestamp>/models/checkpoint_round_30")
    p.add_argument("--dataset", required=True, help="hf:<repo_id>, a local LeRobot dataset directory, or embedded:<name>")
    p.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    p.add_argument("--baseline", default="auto", help="model to compare with: a Hub id, checkpoint directory or "
                   "embedded:tiny; 'auto' (default): the run's base model; 'none': no comparison")
    p.add_argument("--camera-map", default="auto", help="the dataset's camera names -> the policy's (default auto)")
    p.add_argument("--chart", type=Path, help="PNG of predicted vs recorded joint trajectories (default: "
                   "predictions/<checkpoint>_<dataset>_ep<N>.png in the checkpoint's run directory, else here)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--json", action="store_true", help="the errors as JSON on stdout")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import re

    from rich.console import Console
    from rich.table import Table

    from app.learning.predict import predict

    if not args.checkpoint.is_dir():
        raise UserError(f"checkpoint {str(args.checkpoint)!r} is not a directory: give a models/checkpoint_round_N")
    run_dir = args.checkpoint.resolve().parent.parent  # a checkpoint is sealed: the chart goes beside it
    where = run_dir if (run_dir / "run_config.json").is_file() else Path.cwd()
    name = f"{args.checkpoint.name}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.dataset)}_ep{args.episode}.png"
    chart = args.chart or where / "predictions" / name
    with contextlib.redirect_stdout(sys.stderr):  # LeRobot prints as it builds a policy; stdout is the answer
        result = predict(args.checkpoint, args.dataset, args.episode, None if args.baseline == "none" else args.baseline,
                         args.camera_map, chart, args.device)
    if args.json:
        sys.stdout.write(json.dumps({"dataset": result.dataset, "episode": result.episode, "frames": result.frames,
                                     "chart": str(result.chart), "policies": [
                                         {"policy": s.policy, "mean-error": s.mean_error, "joint-error": s.joint_error}
                                         for s in result.scores]}, indent=2) + "\n")
        return 0
    table = Table(title=f"{args.dataset} episode {args.episode}: mean absolute action error ({result.frames} frames)")
    table.add_column("joint")
    for score in result.scores:
        table.add_column(score.policy, justify="right")
    for joint in result.scores[0].joint_error:
        table.add_row(joint, *(f"{s.joint_error[joint]:.3f}" for s in result.scores))
    table.add_row("mean", *(f"{s.mean_error:.3f}" for s in result.scores), style="bold")
    out = Console(soft_wrap=True)
    out.print(table)
    out.print(f"chart  {result.chart}")
    return 0
