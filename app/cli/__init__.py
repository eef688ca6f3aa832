"""`fedvla`: the project's command line.

  fedvla train   standalone (centralized) fine-tuning of one dataset: the baseline
  fedvla node    an operator's SuperNode: a warm worker that checks the dataset and does the work, beside
                 flower-supernode
  fedvla demo    a real federation on this machine: SuperLink + SuperNodes + `flwr run`, embedded data
  fedvla check   a dataset against the federation's model and settings: what fits, what does not, the fix
  fedvla predict a checkpoint on a recorded episode: per-joint action error against the base model, and a chart
  fedvla status  is the SuperLink reachable, which SuperNodes are connected, which runs exist
  fedvla push    push a saved checkpoint to the Hugging Face Hub
  fedvla certs   the federation owner's TLS files (a CA and the SuperLink's certificate)
  fedvla keys    an operator's SuperNode authentication key pair

Exit codes: 0 done (and for check/status: fits, reachable), 1 the answer is no (check: the dataset does not fit;
status: the SuperLink cannot be reached; demo: the run did not finish completed), 2 a user error (a bad flag, a missing dataset, a schema mismatch), printed
as one line without a traceback, 130 interrupted.
Heavy libraries (torch, lerobot) load only once a command needs them, so `--help` is instant.

One module per command (app.cli.<command>: `add_parser` and `run`); `python -m app.cli` runs `main`.
"""

from __future__ import annotations

import argparse
import sys

from app.cli import certs, check, demo, keys, node, predict, push, status, train
from app.cli.args import Parser
from app.common.errors import UserError
from app.common.telemetry import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fedvla", description="Federated fine-tuning of SmolVLA on SO-100/SO-101 recordings.")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="console detail (any case; default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_parser(sub)
    node.add_parser(sub)
    demo.add_parser(sub)
    check.add_parser(sub)
    predict.add_parser(sub)
    status.add_parser(sub)
    push.add_parser(sub)
    certs.add_parser(sub)
    keys.add_parser(sub)
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
