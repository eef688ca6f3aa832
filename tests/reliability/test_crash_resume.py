"""A run that survives its coordinator, on the shared deployment (TLS and SuperNode authentication on): the
ServerApp is SIGKILLed in round 2, then the whole SuperLink (with its ServerApp) in round 3. Each time the run is
submitted again with the same run-config, as `docker compose`'s `submit` service does, and carries on from its last
completed round in the same outputs directory; the SuperNodes reconnect to the restarted SuperLink by themselves. No
completed round is lost or repeated."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from app.learning.checkpoint import verify_checkpoint
from app.common.config import EMBEDDED_OVERRIDES
from app.ops.demo import APP_DIR, find_run_dir
from app.ops.launch import Deployment
from tests.integration.conftest import NODES, command_line, wait_for_training

pytestmark = pytest.mark.integration
ROUNDS = 3  # killed in round 2 and in round 3, the last


def serverapp_processes(deployment: Deployment) -> list[psutil.Process]:
    superlink = psutil.Process(deployment.processes["superlink"].pid)
    return [p for p in superlink.children(recursive=True) if "serverapp" in " ".join(command_line(p))]


def events(log_lines, name: str) -> list[dict]:
    return [event for event in map(json.loads, log_lines()) if event["event"] == name]


def kill_while_training(scenario, log_lines, server_round: int, kill) -> None:
    """`kill()` once a node is training `server_round`, and check the round was still open when it landed."""
    wait_for_training(scenario, NODES[0], server_round)
    kill()
    assert server_round not in [e["round"] for e in events(log_lines, "round_done")], "the kill missed the round"


@pytest.fixture(scope="module")
def crashed_run(shared_deployment, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    # with a server optimizer, whose momentum must be carried on too (tests/test_strategy.py checks the steps)
    run_config = {**EMBEDDED_OVERRIDES, "num-server-rounds": ROUNDS, "local-steps": 10, "output-dir": str(out),
                  "server-optimizer": "fedavgm"}
    with shared_deployment.scenario("crash-resume") as scenario:
        deployment = scenario.deployment
        first = deployment.submit(APP_DIR, run_config)

        def log_lines() -> list[str]:
            try:
                return (find_run_dir(out, first) / "server" / "server.log").read_text().splitlines()
            except FileNotFoundError:
                return []

        def kill_serverapp() -> None:  # the ServerApp dies; the SuperLink lives on
            for process in serverapp_processes(deployment):
                process.kill()

        kill_while_training(scenario, log_lines, 2, kill_serverapp)
        deployment.flwr("stop", str(first), "fedvla-local", timeout=60)  # as an operator would, if it still shows
        second = deployment.submit(APP_DIR, run_config)
        run_dir = find_run_dir(out, first)
        kill_while_training(scenario, log_lines, 3,  # the SuperLink and its ServerApp
                            lambda: os.killpg(deployment.processes["superlink"].pid, signal.SIGKILL))
        deployment.processes["superlink"].wait()
        deployment.start_superlink(cwd=APP_DIR)  # the same state database, certificates and registered keys
        third = deployment.submit(APP_DIR, run_config)
        status = deployment.wait(third, ended=lambda: '"run_done"' in (run_dir / "server" / "server.log").read_text())
    saved = {e["round"]: e["weights_digest"] for e in events(log_lines, "round_state_saved")}
    continued = events(log_lines, "run_continued")
    # a continued run that did not start from the weights its last completed round saved
    corrupt_loaded = sum(e["weights_digest"] != saved.get(e["rounds_done"]) for e in continued)
    return status, run_dir, (first, second, third), corrupt_loaded


def test_the_run_carries_on_without_losing_or_repeating_a_round(crashed_run, ledger):
    status, run_dir, run_ids, corrupt_loaded = crashed_run
    summary = json.loads((run_dir / "server" / "federated_metrics.json").read_text())
    done = [json.loads(line)["round"] for line in (run_dir / "server" / "server.log").read_text().splitlines()
            if '"round_done"' in line]
    recorded = [r["round"] for r in summary["rounds"]]
    ledger.book("ServerApp and SuperLink SIGKILLed mid-round", faults=2,
                runs_completed=int(status == "finished:completed"),
                rounds_lost=len(set(range(1, ROUNDS + 1)) - set(done)), corrupt_loaded=corrupt_loaded)
    assert status == "finished:completed"
    assert corrupt_loaded == 0, "a continued run started from other weights than its last completed round's"
    assert recorded == list(range(1, ROUNDS + 1))
    assert sorted(done) == list(range(1, ROUNDS + 1)), "each round completed exactly once"
    assert json.loads((run_dir / "run_config.json").read_text())["continued-by"] == list(run_ids[1:])


def test_the_carried_on_run_has_its_whole_history_and_a_sound_final_checkpoint(crashed_run):
    _, run_dir, _, _ = crashed_run
    history = json.loads((run_dir / "server" / "eval_policy_loss_history.json").read_text())
    assert sorted(history["server"], key=int) == [str(r) for r in range(ROUNDS + 1)]
    rounds = json.loads((run_dir / "server" / "federated_metrics.json").read_text())["rounds"]
    assert all(r["client-eval-loss"] is not None for r in rounds), "the interrupted rounds' node evaluation too"
    verify_checkpoint(run_dir / "models" / f"checkpoint_round_{ROUNDS}")
    carried_on = [json.loads(line) for line in (run_dir / "server" / "server.log").read_text().splitlines()
                  if '"run_continued"' in line]
    assert [event["server_optimizer_state"] for event in carried_on] == [True, True], "its momentum came back"
    assert (run_dir / "server" / "state" / "finished.json").exists()
