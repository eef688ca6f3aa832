"""Secrets stay secret and the model card stays anonymous: a real federated run (Flower's simulation engine) with
HF_TOKEN and WANDB_API_KEY set to fresh values, pushing its checkpoint to a stand-in Hub with that token, then a
scan of everything the run left: outputs, node logs, Prometheus metric files, Flower's own files, the console."""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from pathlib import Path

import pytest

from app import embedded
from app.config import EMBEDDED_OVERRIDES, fedvla_home
from tests.fakes.hub import FakeHub
from tests.integration.conftest import flwr_run, local_simulation, stop_local_superlink

pytestmark = pytest.mark.integration

REPO_ID = "me/fedvla-secret-scan"
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def files_under(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if root.exists() for p in root.rglob("*") if p.is_file())


def machine_paths(text: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """The paths of this machine (home, temporary directory, FEDVLA_HOME, the checkout) that `text` names, once the
    `allowed` ones are taken out."""
    for path in allowed:
        text = text.replace(path, "")
    places = {str(Path.home()), tempfile.gettempdir(), str(fedvla_home()), str(Path(__file__).resolve().parents[2])}
    return sorted(place for place in places if re.search(re.escape(place) + r"(?![\w.-])", text))


def test_a_run_leaves_no_secret_anywhere_and_a_model_card_without_local_paths(tmp_path, ledger):
    hf_token = "hf_" + secrets.token_hex(17)  # shaped like a real one
    wandb_key = secrets.token_hex(20)
    home, out, prometheus = tmp_path / "flwr-home", tmp_path / "outputs", tmp_path / "prometheus"
    prometheus.mkdir()
    env = local_simulation(home, num_supernodes=2)
    run_config = {
        **EMBEDDED_OVERRIDES,
        # Local dataset directories, as an operator's and a coordinator's would be: their paths must not leak.
        "partition-dataset": str(embedded.ensure_operator_dataset(0)),
        "server-eval-dataset": str(embedded.ensure_server_eval_dataset()),
        "num-server-rounds": 1, "local-steps": 5, "checkpoint-interval": 1, "hf-repo-id": REPO_ID,
        "use-wandb": False, "output-dir": str(out),
    }
    started = time.time()
    with FakeHub() as hub:
        env.update({"HF_TOKEN": hf_token, "WANDB_API_KEY": wandb_key, "HF_ENDPOINT": hub.endpoint,
                    "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
                    "PROMETHEUS_MULTIPROC_DIR": str(prometheus)})  # metric label values land in these files
        try:
            result = flwr_run(env, run_config)
        finally:
            stop_local_superlink(home)

    checkpoint = next(out.glob("*/models/checkpoint_round_1"), tmp_path / "no checkpoint")
    node_logs = fedvla_home() / "logs"
    scanned = files_under(out, node_logs, prometheus, home)
    findings = [f"{path}: {name}" for path in scanned for name, value in
                (("HF_TOKEN", hf_token.encode()), ("WANDB_API_KEY", wandb_key.encode())) if value in path.read_bytes()]
    findings += [f"{path}: a private key" for path in scanned if PRIVATE_KEY.search(path.read_bytes())]
    findings += [f"console: {name}" for name, value in (("HF_TOKEN", hf_token), ("WANDB_API_KEY", wandb_key))
                 if value in result.stdout + result.stderr]
    # The model card, what the checkpoint says of its run (metrics.json) and LeRobot's config files. Those name the
    # backbone that from_pretrained builds the policy on: a Hub id for a real base model (lerobot/smolvla_base), the
    # generated backbone's directory for the offline tiny one. No other path.
    backbone = str(embedded.embedded().backbone)
    for path in [checkpoint / "README.md", *checkpoint.glob("*.json")] if checkpoint.exists() else []:
        findings += [f"{path.name} names {p}" for p in machine_paths(path.read_text(), allowed=(backbone,))]
    ledger.book("secrets and local paths in a run's files", runs_completed=int(result.returncode == 0),
                secrets_found=len(findings))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert findings == []
    # The scan covered what it claims: the run's logs, both nodes' logs of this run, metric files and the checkpoint.
    run_dir = checkpoint.parents[1]
    for name in ("run.log", "server/server.log", "models/checkpoint_round_1/README.md",
                 "models/checkpoint_round_1/model.safetensors", "models/checkpoint_round_1/config.json"):
        assert run_dir / name in scanned, name
    assert all((node_logs / f"client_partition_{i}" / "client.log").stat().st_mtime >= started for i in (0, 1))
    assert list(prometheus.glob("*.db")), "the apps wrote no metric files to scan"
    # ... and the token did reach the ServerApp: it pushed with it, to a repository it created private.
    assert {auth for _, _, auth in hub.requests} == {f"Bearer {hf_token}"}
    assert hub.created[REPO_ID]["visibility"] == "private"
    assert "model.safetensors" in hub.files[REPO_ID]
