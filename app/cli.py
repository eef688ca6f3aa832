"""`fedvla`: the project's command line.

  fedvla train   standalone (centralized) fine-tuning of one dataset: the baseline
  fedvla demo    a real federation on this machine: SuperLink + SuperNodes + `flwr run`, embedded data
  fedvla push    push a saved checkpoint to the Hugging Face Hub

User errors (a bad flag, a missing dataset, a schema mismatch) print one line and exit 2, without a traceback.
Heavy libraries (torch, lerobot) load only once a command needs them, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.errors import UserError
from app.telemetry import configure_logging, get_logger

log = get_logger("fedvla")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_train_parser(sub) -> None:
    from app.config import EMBEDDED_OVERRIDES
    from app.model import DEFAULT_MODEL

    p = sub.add_parser("train", help="standalone fine-tuning of one dataset (the centralized baseline)")
    p.add_argument("--embedded", action="store_true",
                   help="offline default: tiny embedded SmolVLA on embedded:operator-0, lr 1e-3")
    p.add_argument("--model", help=f"Hub id, checkpoint directory or embedded:tiny (default {DEFAULT_MODEL})")
    p.add_argument("--dataset", help="hf:<repo_id>, a local LeRobot dataset directory, or embedded:operator-<i>")
    p.add_argument("--steps", type=_positive_int, default=200)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--lr", type=_positive_float, help="peak learning rate (default 1e-4; 1e-3 with --embedded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=_positive_int, default=50, help="held-out evaluation interval in steps")
    p.add_argument("--heldout-fraction", type=float, default=0.2)
    p.add_argument("--fps", type=_positive_int, default=30, help="frame rate the policy expects")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--output-dir", type=Path, default=Path("outputs"))
    p.set_defaults(handler=_train, embedded_defaults=EMBEDDED_OVERRIDES, default_model=DEFAULT_MODEL)


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from app.standalone import StandaloneConfig, run_standalone

    if args.embedded:
        model = args.model or args.embedded_defaults["model"]
        dataset = args.dataset or "embedded:operator-0"
        lr = args.lr or args.embedded_defaults["lr"]
    else:
        if not args.dataset:
            raise UserError("--dataset is required (hf:<repo_id> or a local path), or pass --embedded for the offline demo")
        model, dataset, lr = args.model or args.default_model, args.dataset, args.lr or 1e-4
    if not 0 < args.heldout_fraction < 1:
        raise UserError(f"--heldout-fraction must be between 0 and 1, got {args.heldout_fraction}")
    cfg = StandaloneConfig(
        model=model, dataset=dataset, steps=args.steps, batch_size=args.batch_size, lr=lr, seed=args.seed,
        heldout_fraction=args.heldout_fraction, eval_every=args.eval_every, fps=args.fps, device=args.device,
        output_dir=args.output_dir,
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:
        task = bar.add_task("train", total=cfg.steps, loss=float("nan"))
        summary = run_standalone(cfg, progress=lambda done, total, loss: bar.update(task, completed=done, loss=loss))
    out = Console()
    out.print(f"[bold]Standalone training[/bold]: {cfg.steps} steps of {cfg.model} on {cfg.dataset}")
    out.print(f"  held-out loss  initial {summary.initial_heldout_loss:.4f}  ->  final {summary.final_heldout_loss:.4f}"
              f"  ({summary.final_heldout_loss / summary.initial_heldout_loss:.0%} of initial)")
    out.print(f"  training time  {summary.seconds:.1f} s")
    out.print(f"  checkpoint     {summary.checkpoint}")
    out.print(f"  outputs        {summary.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedvla", description="Federated fine-tuning of SmolVLA on SO-100/SO-101 recordings.")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return args.handler(args)
    except UserError as exc:
        sys.stderr.write(f"fedvla {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
