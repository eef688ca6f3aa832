"""`fedvla check`: a dataset against the federation's model and settings, with the fix."""

from __future__ import annotations

import argparse
import sys

from app.cli.args import add_federation_settings, checked_settings


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="a dataset against the federation's model and settings, with the fix")
    p.add_argument("dataset", help="hf:<repo_id>, a local LeRobot dataset directory, or embedded:<name>")
    add_federation_settings(p)
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    from dataclasses import asdict

    from rich.console import Console
    from rich.markup import escape

    from app.learning.learner import inspect_dataset

    settings = checked_settings(args, args.dataset)
    with contextlib.redirect_stdout(sys.stderr):  # what libraries print while loading is not the report
        check = inspect_dataset(*settings.values())
    if args.json:
        sys.stdout.write(json.dumps({"ok": check.ok, "settings": settings, **asdict(check)}, indent=2) + "\n")
        return 0 if check.ok else 1
    out = Console(soft_wrap=True, highlight=False)
    out.print(f"[bold]{args.dataset}[/bold] for model={settings['model']} fps={settings['fps']} "
              f"cameras={settings['cameras']} camera-map={settings['camera-map']}")
    for finding in check.fit.findings:
        out.print(f"  {'[green]ok[/green]' if finding.ok else '[red]no[/red]'}  {escape(finding.detail)}")
    out.print(f"  {check.size.episodes} episodes, {check.size.frames} frames")
    if check.fit.ok:
        out.print("  [green]ok[/green]  first and last episodes decode" if not check.frames_problem
                  else f"  [red]no[/red]  {escape(check.frames_problem)}")
    if check.fit.camera_map:
        out.print(f"fix: --camera-map {check.fit.camera_map}  (check the pairing: your camera on the left)")
    if check.fit.fps:
        out.print(f"fix: the federation's fps={check.fit.fps}, or record at {settings['fps']} fps")
    out.print("[green]fits[/green]" if check.ok else "[red]does not fit[/red]")
    return 0 if check.ok else 1
