"""A SuperNode lost mid-run, on the shared deployment (flower-superlink, `fedvla node` x 2 over gRPC on 127.0.0.1,
TLS and SuperNode authentication): the round it was in closes with the other node's update once Flower's heartbeat
notices, the loss is listed, and the next round's wait for `min-available-nodes` names the missing node and gives up
instead of waiting forever."""

import json
import os
import signal

import pytest

from app.common.config import EMBEDDED_OVERRIDES
from app.ops.demo import APP_DIR, find_run_dir
from tests.integration.conftest import server_events, wait_for_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lost_node_run(shared_deployment, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    # the last scenario of the shared deployment (tests/conftest.py): it leaves operator_0 dead
    with shared_deployment.scenario("node loss") as scenario:
        deployment = scenario.deployment
        run_id = deployment.submit(APP_DIR, {**EMBEDDED_OVERRIDES, "num-server-rounds": 3, "local-steps": 20,
                                             "node-wait-timeout": 20, "output-dir": str(out)})
        wait_for_training(scenario, "operator_0", 2)  # the kill lands on a message in progress
        os.killpg(deployment.processes["operator_0"].pid, signal.SIGKILL)  # the whole node: SuperNode, worker, executor
        # round 1's server work may still run beside round 2's training
        assert server_events(out, run_id).count("round_done") <= 1, "the kill missed round 2"
        status = deployment.wait(run_id, ended=lambda: "run_failed" in server_events(out, run_id))
    run_dir = find_run_dir(out, run_id)
    return status, run_dir


def test_the_round_closes_with_the_surviving_nodes_update(lost_node_run):
    _, run_dir = lost_node_run
    rounds = json.loads((run_dir / "server" / "federated_metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert sorted(rounds[1]["nodes"]) == ["operator_1"]
    (dropped,) = rounds[1]["dropped"]
    assert dropped.startswith("train node ")


def test_the_wait_for_the_lost_node_names_it_and_gives_up(lost_node_run):
    status, run_dir = lost_node_run
    assert status == "finished:failed"
    failure = [json.loads(line) for line in (run_dir / "server" / "server.log").read_text().splitlines()
               if '"run_failed"' in line]
    assert failure, "the ServerApp logged why it stopped"
    assert "only 1 of min-available-nodes=2 nodes connected after 20 s; missing: operator_0" in json.dumps(failure)
