"""`fedvla demo` survives a killed SuperNode: operator_0's whole node (its `fedvla node`, flower-supernode, worker and
ClientApps) is SIGKILLed while its worker trains round 1, as a robot PC losing power would be. Round 1 closes with
operator_1's update once Flower's heartbeat notices, the demo starts the node again, round 2 trains on both, and the
demo ends with its summary and exit code 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import REPO, command_line, wait_for_training_in

pytestmark = pytest.mark.integration
ROUNDS = 2
KILLED, KILL_ROUND = "operator_0", 1


def node_log(tmp: Path, name: str) -> str:
    """A demo node's console log so far: the demo keeps it in its working directory under TMPDIR (and copies it into
    the run's `processes/` only at the end)."""
    return "".join(path.read_text(errors="replace") for path in tmp.glob(f"fedvla-demo-*/logs/{name}.log"))


def node_group(demo: subprocess.Popen, name: str) -> int:
    """The process group of the demo's `fedvla node --name <name>` (each node runs in a session of its own)."""
    for process in psutil.Process(demo.pid).children(recursive=True):
        command = command_line(process)
        if command[2:4] == ["app.cli", "node"] and command[command.index("--name") + 1] == name:
            return process.pid
    raise LookupError(f"no `fedvla node --name {name}` under the demo (pid {demo.pid})")


def trained(summary: dict) -> list[str]:
    """The nodes whose update a round used (a round's `nodes` also lists those that only evaluated its model)."""
    return sorted(name for name, node in summary["nodes"].items() if node["samples"])


def test_the_demo_carries_on_without_a_killed_node_and_takes_it_back(tmp_path, ledger):
    out, tmp = tmp_path / "outputs", tmp_path / "tmp"
    tmp.mkdir()
    with (tmp_path / "stdout").open("w+") as stdout, (tmp_path / "stderr").open("w+") as stderr:  # no pipe fills up
        demo = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "--rounds", str(ROUNDS), "--local-steps",
                                 "20", "--output-dir", str(out)], cwd=REPO, stdout=stdout, stderr=stderr, text=True,
                                start_new_session=True, env={**os.environ, "TMPDIR": str(tmp)})
        def demo_alive() -> None:
            assert demo.poll() is None, f"the demo exited {demo.returncode} before {KILLED} trained"

        try:
            # The kill lands once the node's worker says it is training: it hits a message in progress.
            wait_for_training_in(lambda: node_log(tmp, KILLED), demo_alive, KILLED, KILL_ROUND)
            os.killpg(node_group(demo, KILLED), signal.SIGKILL)
            demo.wait(timeout=900)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    (metrics_file,) = out.glob("*/server/federated_metrics.json")
    rounds = json.loads(metrics_file.read_text())["rounds"]
    ledger.book(f"demo node SIGKILLed in round {KILL_ROUND}", faults=1, runs_completed=int(demo.returncode == 0),
                rounds_lost=ROUNDS - len(rounds))
    assert demo.returncode == 0, stderr[-3000:]
    assert "run finished:completed" in stdout and f"outputs           {metrics_file.parent.parent}" in stdout
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert trained(rounds[0]) == ["operator_1"] and rounds[0]["dropped"], rounds[0]
    # Restarted, the node has a new Flower node id under the same name: the reports show both ids.
    assert [name.split(" ")[0] for name in trained(rounds[1])] == ["operator_0", "operator_1"], rounds[1]
    assert "supernode_lost" in stderr and "supernode_restart" in stderr
