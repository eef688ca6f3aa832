"""Warm SuperNodes on the shared deployment (flower-superlink, `fedvla node` x 2 over gRPC on 127.0.0.1, TLS and
SuperNode authentication): each node's worker serves every message of a run with one policy, survives being
killed mid-run, and gives the next run a fresh policy. Checked on the processes' own logs."""

import json
import os
import re
import signal

import psutil
import pytest

from app.common.config import EMBEDDED_OVERRIDES
from app.ops.demo import APP_DIR, find_run_dir
from app.ops.launch import Deployment
from tests.integration.conftest import NODES, command_line, server_events, trainings, wait_for_training

pytestmark = pytest.mark.integration


def kill_worker(deployment: Deployment, node: str) -> int:
    (worker,) = [p for p in psutil.Process(deployment.processes[node].pid).children(recursive=True)
                 if "app.node.worker" in command_line(p)]
    os.kill(worker.pid, signal.SIGKILL)
    return worker.pid


@pytest.fixture(scope="module")
def two_runs(shared_deployment, tmp_path_factory):
    """Run A (2 rounds; operator_0's worker is SIGKILLed while it trains round 2), then run B with other settings."""
    out = tmp_path_factory.mktemp("outputs")
    base = {**EMBEDDED_OVERRIDES, "min-train-nodes": 2, "min-available-nodes": 2, "local-steps": 20,
            "output-dir": str(out)}
    with shared_deployment.scenario("warm nodes") as scenario:
        deployment = scenario.deployment
        run_a = deployment.submit(APP_DIR, {**base, "num-server-rounds": 2})
        wait_for_training(scenario, "operator_0", 2)
        killed = kill_worker(deployment, "operator_0")
        status_a = deployment.wait(run_a, ended=lambda: "run_done" in server_events(out, run_a))
        run_b = deployment.submit(APP_DIR, {**base, "num-server-rounds": 1, "heldout-fraction": 0.25, "seed": 7})
        status_b = deployment.wait(run_b, ended=lambda: "run_done" in server_events(out, run_b))
        logs = {name: scenario.log(name) for name in NODES}
    return {"out": out, "runs": (run_a, run_b), "status": (status_a, status_b), "killed": killed, "logs": logs}


def test_both_runs_complete_with_every_node_in_every_round(two_runs):
    assert two_runs["status"] == ("finished:completed", "finished:completed")
    run_a, _ = two_runs["runs"]
    rounds = json.loads((find_run_dir(two_runs["out"], run_a) / "server" / "federated_metrics.json").read_text())
    assert [sorted(r["nodes"]) for r in rounds["rounds"]] == [list(NODES)] * 2, "every node is reported in every round"
    assert all(node["train-loss"] is not None for r in rounds["rounds"] for node in r["nodes"].values()), \
        "and every node's update is in every round (a node listed only for its evaluation has no train-loss)"


def test_a_warm_node_builds_one_policy_per_run_and_serves_every_message_with_it(two_runs):
    log = two_runs["logs"]["operator_1"]
    # run A: stats query, 2 train messages, final evaluate; run B: query, train, evaluate
    assert log.count("message_served") == 7
    assert log.count("worker_started") == 0, "the worker that served earlier scenarios serves both runs"
    built = [int(n) for n in re.findall(r"message_served .*\bpolicies_built=(\d+)", log)]
    assert built == [built[0]] * 4 + [built[0] + 1] * 3, "one worker (its count of policies goes on), one policy per run"
    assert log.count("policy_built=True") == 2, "one policy per run"
    for run_id in two_runs["runs"]:  # (an earlier scenario's failed run may free its policy in this window too)
        assert len(re.findall(rf"learner_ready .*\brun_id={run_id}\b", log)) == 1, "one policy per run"
        assert len(re.findall(rf"learner_released .*\brun_id={run_id}\b", log)) == 1, \
            "each run's policy is freed after its final message"
    for line in log.splitlines():
        if "message_forwarded" in line:
            assert "heavy_imports=[]" in line, "the per-message ClientApp process imported torch: " + line


def test_a_killed_worker_is_reported_and_restarted(two_runs):
    log = two_runs["logs"]["operator_0"]
    assert log.count("worker_started") == 1, "the killed worker's successor"
    (exited,) = [line for line in log.splitlines() if "companion_exited" in line]
    assert f"pid={two_runs['killed']} " in exited and "code=-9" in exited and "name=worker" in exited, exited


def test_the_message_a_killed_worker_was_training_is_trained_again_from_full_weights_and_aggregated(two_runs):
    """The restarted worker holds no reference for the round's int8 delta: it refuses the retried message
    (ReferenceMissing), the server sends it the round's full weights, and its update still counts."""
    assert trainings(two_runs["logs"]["operator_0"], 2) == 2, "the new worker trains the message the killed one was on"
    run_a, _ = two_runs["runs"]
    events = server_events(two_runs["out"], run_a)
    assert events.count("full_weights_resent") == 1
    assert events.count("reply_dropped") == 0, "and its reply reaches the aggregate"
