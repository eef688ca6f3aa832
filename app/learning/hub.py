"""Pushing checkpoints to the Hugging Face Hub (huggingface_hub; the token comes from HF_TOKEN, never a log)."""

from __future__ import annotations

import os
from pathlib import Path

from app.common.config import RunConfig
from app.common.errors import UserError
from app.common.telemetry import get_logger

log = get_logger(__name__)


def should_push(run: RunConfig) -> bool:
    """Only substantial runs are pushed: a short debug run (fewer rounds than checkpoint-interval) would clutter
    the repository with an unfinished model. Local checkpoints are always written."""
    return bool(run.hf_repo_id) and run.num_server_rounds >= run.checkpoint_interval


def push_checkpoint(directory: Path, repo_id: str, private: bool = True) -> str:
    """Upload a checkpoint directory as one commit to the model repository `repo_id`; returns the commit URL.
    A repository that does not exist yet is created private unless `private` is False (run-config `hf-private`);
    an existing one keeps the visibility it has."""
    from huggingface_hub import HfApi

    if not (directory / "model.safetensors").is_file() or not (directory / "config.json").is_file():
        raise UserError(f"{str(directory)!r} is not a checkpoint directory (needs model.safetensors and config.json)")
    if repo_id.count("/") != 1:
        raise UserError(f"repo id must look like <user>/<model>, got {repo_id!r}")
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise UserError("HF_TOKEN is not set: create a write token at huggingface.co/settings/tokens and export it")
    api = HfApi(token=token)
    log.info("hub_push_start", repo_id=repo_id, checkpoint=str(directory), private=private)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=directory, repo_type="model", commit_message=f"Upload {directory.name}"
    )
    log.info("hub_push_done", repo_id=repo_id, commit_url=commit.commit_url)
    return commit.commit_url
