"""`fedvla demo` survives a killed SuperNode: the whole node (its `fedvla node`, flower-supernode, worker and
ClientApps) is SIGKILLed in round 2, as a robot PC losing power would be. Round 2 closes with the other node's
update once Flower's heartbeat notices, the demo starts the node again, round 3 trains on both, and the demo ends
with its summary and exit code 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.integration.conftest import REPO, command_line

pytestmark = pytest.mark.integration
ROUNDS = 3


def server_log(out) -> list[dict]:
    lines = []
    for path in out.glob("*/server/server.log"):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return lines


def trained(summary: dict) -> list[str]:
    """The nodes whose update a round used (a round's `nodes` also lists those that only evaluated its model)."""
    return sorted(name for name, node in summary["nodes"].items() if node["samples"])


def node_group(demo: subprocess.Popen, name: str) -> int:
    """The process group of the demo's `fedvla node --name <name>` (each node runs in a session of its own)."""
    for child in psutil.Process(demo.pid).children():
        command = command_line(child)
        if "node" in command and command[command.index("--name") + 1] == name:
            return child.pid
    raise LookupError(name)


def test_the_demo_carries_on_without_a_killed_node_and_takes_it_back(tmp_path, ledger):
    out = tmp_path / "outputs"
    demo = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "--rounds", str(ROUNDS), "--local-steps", "20",
                             "--output-dir", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not any(e.get("event") == "round_start" and e.get("round") == 2 for e in server_log(out)):
            assert demo.poll() is None and time.monotonic() < deadline, "the demo never reached round 2"
            time.sleep(0.5)
        time.sleep(2)  # the nodes are training
        os.killpg(node_group(demo, "operator_0"), signal.SIGKILL)
        stdout, stderr = demo.communicate(timeout=900)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    (metrics_file,) = out.glob("*/server/federated_metrics.json")
    rounds = json.loads(metrics_file.read_text())["rounds"]
    ledger.book("demo node SIGKILLed in round 2", faults=1, runs_completed=int(demo.returncode == 0),
                rounds_lost=ROUNDS - len(rounds))
    assert demo.returncode == 0, stderr[-3000:]
    assert "run finished:completed" in stdout and f"outputs           {metrics_file.parent.parent}" in stdout
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert trained(rounds[1]) == ["operator_1"] and rounds[1]["dropped"], rounds[1]
    # Restarted, the node has a new Flower node id under the same name: the reports show both ids.
    assert [name.split(" ")[0] for name in trained(rounds[2])] == ["operator_0", "operator_1"], rounds[2]
    assert "supernode_lost" in stderr and "supernode_restart" in stderr
