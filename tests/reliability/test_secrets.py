"""Secrets stay secret and the model card stays anonymous: a real federated run on the shared deployment, whose
every process holds fresh values of HF_TOKEN and WANDB_API_KEY, pushing its checkpoint to a stand-in Hub with that
token (tests/reliability/conftest.py), then a scan of everything the deployment left: the run's outputs, the
processes' console logs, the nodes' own logs (`fedvla node`, ClientApp, the warm worker), Prometheus metric files,
Flower's own files and the SuperLink's state database."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from app.learning import embedded
from app.common.config import fedvla_home
from tests.reliability.conftest import REPO_ID

pytestmark = pytest.mark.integration

PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def files_under(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if root.exists() for p in ([root] if root.is_file() else root.rglob("*"))
                  if p.is_file())


def machine_paths(text: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """The paths of this machine (home, temporary directory, FEDVLA_HOME, the checkout) that `text` names, once the
    `allowed` ones are taken out."""
    for path in allowed:
        text = text.replace(path, "")
    places = {str(Path.home()), tempfile.gettempdir(), str(fedvla_home()), str(Path(__file__).resolve().parents[2])}
    return sorted(place for place in places if re.search(re.escape(place) + r"(?![\w.-])", text))


def test_a_run_leaves_no_secret_anywhere_and_a_model_card_without_local_paths(recorded_run, ledger):
    shared = recorded_run.shared
    workdir = shared.deployment.workdir
    checkpoint = next(recorded_run.outputs.glob("*/models/checkpoint_round_1"), workdir / "no checkpoint")
    node_logs = fedvla_home() / "logs"
    # Not the owner's certs/ and keys/: private keys belong there (and only there: no private key anywhere else).
    scanned = files_under(recorded_run.outputs, node_logs, shared.prometheus, workdir / "logs",
                          workdir / "flwr-home", *workdir.glob("state.db*"))
    findings = [f"{path}: {name}" for path in scanned for name, value in shared.secrets.items()
                if value.encode() in path.read_bytes()]
    findings += [f"{path}: a private key" for path in scanned if PRIVATE_KEY.search(path.read_bytes())]
    # The model card, what the checkpoint says of its run (metrics.json) and LeRobot's config files. Those name the
    # backbone that from_pretrained builds the policy on: a Hub id for a real base model (lerobot/smolvla_base), the
    # generated backbone's directory for the offline tiny one. No other path.
    backbone = str(embedded.embedded().backbone)
    for path in [checkpoint / "README.md", *checkpoint.glob("*.json")] if checkpoint.exists() else []:
        findings += [f"{path.name} names {p}" for p in machine_paths(path.read_text(), allowed=(backbone,))]
    ledger.book("secrets and local paths in a deployment's files",
                runs_completed=int(recorded_run.status == "finished:completed"), secrets_found=len(findings))

    assert recorded_run.status == "finished:completed"
    assert findings == []
    # The scan covered what it claims: the run's logs, both nodes' logs of this run (their warm workers' too), the
    # processes' consoles, metric files and the checkpoint.
    run_dir = checkpoint.parents[1]
    for name in ("run.log", "server/server.log", "models/checkpoint_round_1/README.md",
                 "models/checkpoint_round_1/model.safetensors", "models/checkpoint_round_1/config.json"):
        assert run_dir / name in scanned, name
    for node in ("operator_0", "operator_1"):
        for log in (node_logs / f"client_{node}" / "client.log", node_logs / f"client_{node}" / "worker.log",
                    workdir / "logs" / f"{node}.log"):
            assert log in scanned and log.stat().st_mtime >= recorded_run.started, log
    assert list(shared.prometheus.glob("*.db")), "the apps wrote no metric files to scan"
    # ... and the token did reach the ServerApp: it pushed with it, to a repository it created private.
    hub = shared.hub
    assert {auth for _, _, auth in hub.requests} == {f"Bearer {shared.secrets['HF_TOKEN']}"}
    assert hub.created[REPO_ID]["visibility"] == "private"
    assert "model.safetensors" in hub.files[REPO_ID]
