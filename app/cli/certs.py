"""`fedvla certs`: the federation owner's TLS files: a CA and the SuperLink's certificate."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.common.telemetry import get_logger

log = get_logger("fedvla")


def add_parser(sub) -> None:
    p = sub.add_parser("certs", help="the federation owner's TLS files: a CA and the SuperLink's certificate")
    p.add_argument("--out", type=Path, required=True, help="directory for ca.crt, ca.key, server.pem, server.key")
    p.add_argument("--name", action="append", required=True, dest="names",
                   help="a DNS name or IP address nodes reach the SuperLink by (repeat for each)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from app.ops.certs import ensure_tls

    files = ensure_tls(args.out, args.names)
    log.info("tls_ready", ca_certificate=str(files.ca_cert), server_certificate=str(files.server_cert),
             send_to_operators=str(files.ca_cert), keep_private=[str(args.out / "ca.key"), str(files.server_key)])
    return 0
