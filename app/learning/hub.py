"""The Hugging Face Hub: pushing checkpoints (huggingface_hub; the token comes from HF_TOKEN, never a log), and the
checks made before anything is fetched from it: a Hub id's syntax, and whether the Hub can be reached at all."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from app.common.config import RunConfig
from app.common.errors import UserError
from app.common.telemetry import get_logger

log = get_logger(__name__)


def hub_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` cannot be a Hub repository id (huggingface_hub's own rules), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        return "a Hub id is <owner>/<name>"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        return str(exc).split("\n")[0]
    return None


def unreachable_hub(what: str, cached: bool) -> str | None:
    """Before `what` (a model or dataset on the Hub) is fetched: if it is not in this machine's cache and the Hub
    cannot be reached, the one line to fail with, instead of huggingface_hub's retries (about 40 s offline); else
    None. One request per process, whatever the number of fetches."""
    from huggingface_hub import constants

    if cached:
        return None
    if constants.HF_HUB_OFFLINE:
        return (f"{what} is not in this machine's Hugging Face cache and HF_HUB_OFFLINE is set: fetch it once with "
                "the Hub reachable, or give a local directory instead")
    reason = _hub_unreachable(constants.ENDPOINT)
    if reason is None:
        return None
    return (f"{what} is not in this machine's Hugging Face cache and the Hub ({constants.ENDPOINT}) cannot be "
            f"reached ({reason}): connect this machine (behind a proxy, set HTTPS_PROXY), or give a local directory "
            "instead; with it already cached, set HF_HUB_OFFLINE=1")


@functools.cache
def _hub_unreachable(endpoint: str) -> str | None:
    import httpx

    try:
        httpx.head(endpoint, timeout=10.0)  # any answer, even an error status, means it is reachable
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


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
