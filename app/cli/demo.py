"""`fedvla demo`: a real local federation (SuperLink + SuperNodes over gRPC) on embedded data."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.args import positive_int
from app.common.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="a real local federation (SuperLink + SuperNodes over gRPC) on embedded data")
    p.add_argument("--nodes", type=positive_int, default=2, help="number of SuperNodes (operators), 2 to 4")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--local-steps", type=positive_int, default=60)
    p.add_argument("--run-config", default="", help="more run-config overrides, 'key=value key2=value2' (TOML values)")
    p.add_argument("--output-dir", type=Path, default=Path("outputs"))
    p.add_argument("--insecure", action="store_true",
                   help="plain gRPC between the local processes (default: TLS, with a CA made for the demo)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from app.ops.demo import run_demo

    if not 2 <= args.nodes <= 4:
        raise UserError(f"--nodes must be between 2 and 4 (one per embedded operator family), got {args.nodes}")
    overrides = {"num-server-rounds": args.rounds, "local-steps": args.local_steps, **parse_overrides(args.run_config)}
    console = Console(stderr=True, soft_wrap=True)

    def show(record: dict) -> None:
        if (line := server_event_line(record, overrides["num-server-rounds"])) is not None:
            console.print(line)

    result = run_demo(args.nodes, overrides, args.output_dir, on_event=show, tls=not args.insecure)
    table = Table(title=f"Federated SmolVLA: {args.nodes} SuperNodes, FedProx, run {result.status}")
    for column in ("round", "train loss", "client eval loss", "server eval loss", "round wall s", "max compute s",
                   "MB moved"):
        table.add_column(column, justify="right")
    initial = result.server_eval.get("0")
    table.add_row("0", "", "", f"{initial:.4f}" if initial is not None else "", "", "", "")
    for r in result.rounds:
        traffic = sum((n["bytes-sent"] or 0) + (n["bytes-received"] or 0) for n in r["nodes"].values()) / 1e6
        table.add_row(str(r["round"]), f"{r['train-loss']:.4f}", _fmt(r.get("client-eval-loss")),
                      _fmt(r.get("server-eval-loss")), f"{r['wall-seconds']:.1f}", f"{r['max-compute-seconds']:.1f}",
                      f"{traffic:.2f}")
    out = Console(soft_wrap=True)  # paths stay whole, to be copied
    out.print(table)
    out.print(f"final checkpoint  {result.final_checkpoint}")
    out.print(f"outputs           {result.run_dir}")
    out.print(f"logs              {result.logs}")
    return 0 if result.status == "finished:completed" else 1


def parse_overrides(text: str) -> dict:
    """`key=value key2=value2` with TOML values, parsed as `flwr run --run-config` parses them (Flower's own
    parser): a quoted value may hold spaces."""
    from click import ClickException
    from flwr.common.config import parse_config_args

    try:
        return parse_config_args([text]) if text else {}
    except (ClickException, ValueError):
        raise UserError(f"--run-config {text!r} is not 'key=value ...' with TOML values, e.g. "
                        "'num-server-rounds=5 hf-repo-id=\"me/model\"'") from None


def server_event_line(record: dict, rounds: int) -> str | None:
    """The demo's console line (rich markup) for a record of the ServerApp's log, or None for one the summary table
    covers (round starts, checkpoints, the run's end)."""
    from rich.markup import escape

    event = record.get("event")
    if event == "run_start":
        return f"run started, outputs in {escape(record['outputs'])}"
    if event == "round_done":
        return (f"[bold]round {record['round']}/{rounds} done[/bold] in {record['wall-seconds']:.0f} s: "
                f"train loss {record['train-loss']:.4f}, server eval loss {_fmt(record.get('server-eval-loss'))}")
    if event == "reply_dropped":
        return (f"[yellow]round {record['round']}: dropped a {record['kind']} reply from node {record['node_id']}"
                f"[/yellow]: {escape(str(record['why']))}")
    if event == "run_failed":
        error = (record.get("exception") or [{}])[0]  # the exception raised; its causes follow
        return (f"[red]run failed[/red]: {error.get('exc_type')}: {escape(str(error.get('exc_value')))} "
                f"(the ServerApp's log: {escape(record['outputs'])}/run.log)")
    return None


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"
