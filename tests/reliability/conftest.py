"""The run that test_secrets.py and test_data_stays_home.py both scan: one federated run on the shared deployment
(tests/integration/shared_deployment.py), with a ClientApp that records every reply it sends, pushing its final
checkpoint to the deployment's stand-in Hub with the deployment's fresh HF_TOKEN."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.learning import embedded
from app.common.config import EMBEDDED_OVERRIDES
from tests.integration.conftest import REPO, server_events
from tests.integration.shared_deployment import SharedDeployment

RECORDER = Path(__file__).with_name("recording_client_app.py")
REPO_ID = "me/fedvla-secret-scan"


def recording_app(directory: Path) -> Path:
    """This project as a Flower App whose ClientApp is tests/reliability/recording_client_app.py."""
    directory.mkdir()
    pyproject = (REPO / "pyproject.toml").read_text()
    component = 'clientapp = "app.federation.client_app:app"'
    assert pyproject.count(component) == 1, "pyproject.toml names the ClientApp otherwise: update this test"
    (directory / "pyproject.toml").write_text(pyproject.replace(component, 'clientapp = "recording_client_app:app"'))
    shutil.copy(RECORDER, directory / RECORDER.name)
    return directory


@dataclass
class RecordedRun:
    status: str  # Flower's final status of the run
    started: float  # time.time() when it was submitted
    outputs: Path  # its output-dir
    run_config: dict
    replies: list[Path]  # every reply the nodes sent, as Flower serialized it for the wire
    shared: SharedDeployment  # the deployment it ran on


@pytest.fixture(scope="session")
def recorded_run(shared_deployment, tmp_path_factory) -> RecordedRun:
    outputs = tmp_path_factory.mktemp("outputs")
    app = recording_app(tmp_path_factory.mktemp("recording") / "app")
    run_config = {
        **EMBEDDED_OVERRIDES,
        # A local directory, as a coordinator's held-out data would be (the nodes' datasets are local directories
        # too): no path of them may leak.
        "server-eval-dataset": str(embedded.ensure_server_eval_dataset()),
        "num-server-rounds": 1, "local-steps": 5, "checkpoint-interval": 1, "hf-repo-id": REPO_ID,
        "use-wandb": False, "output-dir": str(outputs),
    }
    with shared_deployment.scenario("secret and data-stays-home scans") as scenario:
        recorded_before = set(shared_deployment.recorded_replies.iterdir())
        started = time.time()
        run_id = scenario.deployment.submit(app, run_config)
        status = scenario.deployment.wait(run_id, ended=lambda: "run_done" in server_events(outputs, run_id))
    replies = sorted(set(shared_deployment.recorded_replies.iterdir()) - recorded_before)
    return RecordedRun(status, started, outputs, run_config, replies, shared_deployment)
