"""Integration tests start real Flower processes (SuperLink, SuperNodes, simulation engine) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LAYOUT = [
    "run.log",
    "run_config.json",
    "server/server.log",
    "server/round_0_server_eval.json",
    "server/eval_policy_loss_history.json",
    "server/eval_policy_loss_chart.png",
    "server/federated_metrics.json",
    "server/federated_metrics.png",
]


def assert_run_outputs(run_dir: Path, rounds: int, clients: list[str]) -> dict:
    """The upstream outputs layout is complete; returns federated_metrics.json."""
    for name in LAYOUT + [f"server/round_{r}_server_eval.json" for r in range(1, rounds + 1)]:
        assert (run_dir / name).is_file(), name
    for client in clients:
        for name in ["client.log"] + [f"round_{r}.json" for r in range(1, rounds + 1)]:
            assert (run_dir / "clients" / f"client_{client}" / name).is_file(), (client, name)
    checkpoint = run_dir / "models" / f"checkpoint_round_{rounds}"
    for name in ("model.safetensors", "config.json", "policy_preprocessor.json", "README.md", "metrics.json"):
        assert (checkpoint / name).is_file(), name
    metrics = json.loads((run_dir / "server" / "federated_metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, rounds + 1))
    for r in metrics["rounds"]:
        assert r["wall-seconds"] >= r["max-compute-seconds"] > 0
        assert sorted(r["nodes"]) == sorted(clients)
        # eval-frequency 1: every round's global model was evaluated by the nodes (in the next round's train
        # message, or for the last round in evaluate messages of its own)
        assert r["client-eval-loss"] > 0 and all(n["eval-loss"] > 0 for n in r["nodes"].values()), r
        assert all(n["bytes-sent"] > 0 and n["bytes-received"] > 0 for n in r["nodes"].values())
    return metrics


NODES = ("operator_0", "operator_1")  # the SuperNodes of a test deployment


def server_events(output_dir: Path, run_id: int) -> list[str]:
    """The events the run's ServerApp has logged so far (none before it has started)."""
    from app.ops.demo import find_run_dir

    try:
        log_file = find_run_dir(output_dir, run_id) / "server" / "server.log"
        return [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    except (FileNotFoundError, ValueError):
        return []


def trainings(node_log: str, server_round: int) -> int:
    """How many times a node's worker has started training `server_round` (its `round_training` events)."""
    return len(re.findall(rf"round_training .*\bround={server_round}\b", node_log))


def wait_for_training(scenario, node: str, server_round: int, times: int = 1, timeout: float = 600) -> None:
    """Until `node`'s worker is training `server_round` (for the `times`-th time in the shared deployment's
    `scenario`): where a test's kill lands so that it hits a message in progress, not the gap between two."""
    wait_for_training_in(lambda: scenario.log(node), scenario.deployment.check_alive, node, server_round, times,
                         timeout)


def wait_for_training_in(read_log, check_alive, node: str, server_round: int, times: int = 1,
                         timeout: float = 600) -> None:
    """wait_for_training on any node log: `read_log()` returns the log so far, `check_alive()` raises once what
    runs the node is gone."""
    deadline = time.monotonic() + timeout
    while trainings(read_log(), server_round) < times:
        check_alive()
        assert time.monotonic() < deadline, f"{node} never started training round {server_round}"
        time.sleep(0.2)


def command_line(process) -> list[str]:
    """A psutil process's command line; [] for one that ended since it was listed (a ClientApp process, a `flwr`
    call)."""
    import psutil

    try:
        return process.cmdline()
    except psutil.NoSuchProcess:
        return []


def server_eval(run_dir: Path, server_round: int) -> float:
    return json.loads((run_dir / "server" / f"round_{server_round}_server_eval.json").read_text())["eval-loss"]


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


def run_cli(*args: str, timeout: int = 1200, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, **kwargs)


def local_simulation(home: Path, num_supernodes: int) -> dict[str, str]:
    """A private FLWR_HOME with a local-simulation connection of `num_supernodes` virtual SuperNodes: the
    environment for `flwr_run`. Stop the SuperLink it starts with `stop_local_superlink(home)`."""
    from app.ops.launch import free_port

    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local-simulation"\n\n[superlink.local-simulation]\n'
        f'address = ":local:"\noptions.num-supernodes = {num_supernodes}\n'
    )
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # offline: the app's dependencies are installed
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "WANDB_MODE": "offline",  # use-wandb runs write their W&B run to disk
        "WANDB_SILENT": "true",
    })
    return env


def stop_local_superlink(home: Path) -> None:
    """Stops the background SuperLink (and its simulation) that `flwr run` started for this FLWR_HOME."""
    pids = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.killpg(int(pid), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            os.kill(int(pid), signal.SIGTERM)


def flwr_run(env: dict[str, str], run_config: dict, app: Path = REPO) -> subprocess.CompletedProcess:
    """`flwr run <app> local-simulation --stream` with `run_config`."""
    from app.ops.launch import config_arg

    return subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), "run", str(app), "local-simulation", "--stream",
         "--run-config", config_arg(run_config)],
        capture_output=True, text=True, env=env, timeout=1200,
    )


def flwr_statuses(env: dict[str, str]) -> list[str]:
    """The status of each run the local-simulation SuperLink of `env` knows (`flwr ls`): `flwr run --stream` exits
    0 whatever its run's outcome, so a test reads the outcome here."""
    result = subprocess.run([str(Path(sys.executable).parent / "flwr"), "ls", "local-simulation", "--format", "json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [run["status"] for run in json.loads(result.stdout)["runs"]]
