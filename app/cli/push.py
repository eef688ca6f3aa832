"""`fedvla push`: push a saved checkpoint directory to the Hugging Face Hub (needs HF_TOKEN)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.common.errors import UserError
from app.common.telemetry import get_logger

log = get_logger("fedvla")


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="push a saved checkpoint directory to the Hugging Face Hub (needs HF_TOKEN)")
    p.add_argument("checkpoint", type=Path, help="e.g. outputs/<timestamp>/models/checkpoint_round_30")
    p.add_argument("--repo-id", help="<user>/<model>; default: the run's hf-repo-id")
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=None,
                            help="create the repository private (default: the run's hf-private, else private)")
    visibility.add_argument("--public", dest="private", action="store_false", default=None,
                            help="create the repository public")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from app.learning.hub import push_checkpoint

    run_config_file = args.checkpoint.resolve().parent.parent / "run_config.json"
    run_config = json.loads(run_config_file.read_text()).get("run-config", {}) if run_config_file.exists() else {}
    repo_id = args.repo_id or run_config.get("hf-repo-id") or None
    if not repo_id:
        raise UserError("no --repo-id given and the run had no hf-repo-id: pass --repo-id <user>/<model>")
    # Publishing is a choice made explicitly (--public, or the run's hf-private=false), never a default.
    private = args.private if args.private is not None else str(run_config.get("hf-private", True)).lower() != "false"
    url = push_checkpoint(args.checkpoint, repo_id, private=private)
    log.info("pushed", repo_id=repo_id, commit_url=url)
    return 0
