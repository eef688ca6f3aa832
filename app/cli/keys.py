"""`fedvla keys`: an operator's SuperNode key pair, for SuperNode authentication."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.common.telemetry import get_logger

log = get_logger("fedvla")


def add_parser(sub) -> None:
    p = sub.add_parser("keys", help="an operator's SuperNode key pair, for SuperNode authentication")
    p.add_argument("--name", required=True, help="the node's name, e.g. operator_0")
    p.add_argument("--out", type=Path, default=Path("keys"), help="directory for <name>.key and <name>.pub")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from app.ops.certs import ensure_node_key

    private, public = ensure_node_key(args.out, args.name)
    log.info("node_key_ready", private_key_file=str(private), public_key_file=str(public),
             next_step=f"send {public} to the federation's owner; start the node with --auth-private-key {private}")
    return 0
