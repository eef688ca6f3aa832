"""`fedvla status`: is the SuperLink reachable, which SuperNodes are connected, which runs exist."""

from __future__ import annotations

import argparse
import sys



def add_parser(sub) -> None:
    p = sub.add_parser("status", help="is the SuperLink reachable, which SuperNodes are connected, which runs exist")
    p.add_argument("connection", nargs="?", default="",
                   help="a SuperLink connection of $FLWR_HOME/config.toml (default: its default one)")
    p.add_argument("--json", action="store_true", help="the answer as JSON on stdout")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from app.ops.status import federation_status

    status = federation_status(args.connection)
    if args.json:
        sys.stdout.write(json.dumps(asdict(status), indent=2) + "\n")
        return 0 if status.reachable else 1
    out = Console(soft_wrap=True, highlight=False)
    name = args.connection or "the default connection"
    if not status.reachable:
        out.print(f"SuperLink ({escape(name)}): [red]unreachable[/red]: {escape(status.problem)}")
        return 1
    out.print(f"SuperLink ({escape(name)}): [green]reachable[/green], {len(status.online)} of {len(status.nodes)} "
              f"SuperNodes online, {len(status.runs)} runs")
    if status.nodes:
        nodes = Table("node id", "owner", "status", "since")
        for node in status.nodes:
            since = node.get("online-at") if node.get("status") == "online" else node.get("offline-at")
            nodes.add_row(str(node.get("node-id")), str(node.get("owner-name") or ""), str(node.get("status")),
                          str(since or ""))
        out.print(nodes)
    if status.runs:
        runs = Table("run id", "app", "status", "elapsed", "MB moved")
        for run in status.runs:
            moved = run.get("network-traffic", {}).get("total-bytes", 0) / 1e6
            runs.add_row(str(run.get("run-id")), str(run.get("fab-name", "")), str(run.get("status")),
                         str(run.get("elapsed", "")), f"{moved:.1f}")
        out.print(runs)
    if status.problem:
        out.print(f"runs: {escape(status.problem)}")
    return 0
