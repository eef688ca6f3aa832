"""The three roles of the README, each doing what its section says, on 127.0.0.1 with the embedded default.

- The federation's owner makes the TLS files (`fedvla certs`), runs `flower-superlink` with TLS and SuperNode
  authentication, and registers the operators' public keys (`flwr supernode register`).
- Each operator makes a key pair (`fedvla keys`), checks its dataset (`fedvla check`) and joins with the CA
  certificate and its key (`fedvla node`).
- The researcher has a connection in `$FLWR_HOME/config.toml`, looks at the federation (`fedvla status`), submits
  with `flwr run`, follows the run with `flwr ls`, reads the results and the model card, and pushes the final
  checkpoint to the Hub (a local stand-in of its HTTP API).
Each role has its own directory; only what the README says to hand over crosses: ca.crt and the operators' .pub.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.learning import embedded
from app.ops.demo import APP_DIR
from app.ops.launch import Deployment, config_arg, free_port
from tests.fakes.hub import FakeHub
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration
OPERATORS = ("alice", "bob")


def fedvla(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, f"fedvla {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


def flwr(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**environment(), "FLWR_HOME": str(home)})


def environment() -> dict[str, str]:
    import os

    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def connection(home: Path, name: str, address: str, ca: Path) -> None:
    """A SuperLink connection in `home`/config.toml, as the README shows it."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
                                      f'address = "{address}"\nroot-certificates = "{ca}"\n')


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("roles")
    owner, researcher = root / "owner", root / "researcher"
    embedded.ensure_base_model()
    # Owner: TLS files for the address nodes and researchers use, then the SuperLink with node authentication.
    fedvla("certs", "--out", str(owner / "certs"), "--name", "127.0.0.1", "--name", "localhost")
    with Deployment(owner, auth=True) as deployment:  # starts and stops the processes; the files are the owner's
        deployment.start_superlink(cwd=APP_DIR)
        control = f"127.0.0.1:{deployment.control_port}"
        connection(owner / "flwr-home", "federation", control, owner / "certs" / "ca.crt")
        for i, name in enumerate(OPERATORS):
            operator = root / name
            operator.mkdir(exist_ok=True)
            shutil.copy(owner / "certs" / "ca.crt", operator / "ca.crt")  # the owner sends ca.crt with the address
            fedvla("keys", "--name", name, "--out", str(operator / "keys"))
            shutil.copy(operator / "keys" / f"{name}.pub", owner / f"{name}.pub")  # the operator sends the .pub
            registered = flwr(owner / "flwr-home", "supernode", "register", str(owner / f"{name}.pub"), "federation")
            assert registered.returncode == 0, registered.stdout + registered.stderr
            dataset = str(embedded.ensure_operator_dataset(i))
            checked = fedvla("check", dataset, "--model", "embedded:tiny")
            assert checked.stdout.rstrip().endswith("fits")
            deployment.start_supernode(name, "", "", threads=1, args=[
                sys.executable, "-m", "app.cli", "node", "--superlink", f"127.0.0.1:{deployment.fleet_port}",
                "--root-certificates", str(operator / "ca.crt"), "--auth-private-key", str(operator / "keys" / f"{name}.key"),
                "--dataset-uri", dataset, "--model", "embedded:tiny", "--name", name,
                "--clientappio-port", str(free_port())])
        connection(researcher / "flwr-home", "lab", control, owner / "certs" / "ca.crt")
        yield deployment, root, researcher


def researcher_env(researcher: Path) -> dict[str, str]:
    return {**environment(), "FLWR_HOME": str(researcher / "flwr-home")}


def test_the_researcher_sees_the_federation(federation):
    _, _, researcher = federation
    deadline = time.monotonic() + 180
    while True:
        status = json.loads(fedvla("status", "lab", "--json", env=researcher_env(researcher)).stdout)
        if len([n for n in status["nodes"] if n["status"] == "online"]) == len(OPERATORS) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status["reachable"] and [n["status"] for n in status["nodes"]] == ["online"] * len(OPERATORS), status
    human = fedvla("status", "lab", env=researcher_env(researcher)).stdout
    assert "reachable, 2 of 2 SuperNodes online" in human


def test_the_researcher_runs_follows_reads_and_publishes(federation):
    deployment, root, researcher = federation
    outputs = root / "outputs"
    run_config = {"model": "embedded:tiny", "server-eval-dataset": "embedded:server-eval", "lr": 0.001,
                  "num-server-rounds": 1, "local-steps": 10, "checkpoint-interval": 1, "output-dir": str(outputs),
                  "update-encoding": "int8-delta"}
    submitted = flwr(researcher / "flwr-home", "run", str(APP_DIR), "lab", "--run-config", config_arg(run_config),
                     "--format", "json")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    run_id = json.loads(submitted.stdout)["run-id"]
    deadline, status = time.monotonic() + 900, ""
    while not status.startswith("finished") and time.monotonic() < deadline:
        deployment.check_alive()
        time.sleep(5)
        listed = json.loads(flwr(researcher / "flwr-home", "ls", "lab", "--run-id", str(run_id), "--format", "json").stdout)
        status = listed["runs"][0]["status"]
    assert status == "finished:completed", deployment.log_tail("superlink", 60)
    (run_dir,) = outputs.iterdir()
    rounds = json.loads((run_dir / "server" / "federated_metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1]
    assert rounds[0]["bytes-received"] < rounds[0]["bytes-sent"] / 2  # int8 deltas back, full weights out in round 1
    checkpoint = run_dir / "models" / "checkpoint_round_1"
    card = (checkpoint / "README.md").read_text()
    assert "| update encoding | int8-delta |" in card and "| nodes | 2 |" in card
    with FakeHub() as hub:
        env = {**environment(), "HF_TOKEN": "hf_" + "x" * 30, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0"}
        fedvla("push", str(checkpoint), "--repo-id", "lab/fed-smolvla", env=env)
    assert hub.created["lab/fed-smolvla"]["visibility"] == "private"
    assert {"README.md", "model.safetensors", "loss_chart.png"} <= set(hub.files["lab/fed-smolvla"])
