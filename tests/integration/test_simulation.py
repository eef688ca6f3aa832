"""(a) Flower's simulation engine: `flwr run . local-simulation` with virtual SuperNodes, one per embedded operator."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import EMBEDDED_OVERRIDES
from app.launch import config_arg, free_port
from tests.integration.conftest import REPO, assert_run_outputs, server_eval

pytestmark = pytest.mark.integration


@pytest.fixture
def flwr_env(tmp_path):
    """A private FLWR_HOME with a local-simulation connection; stops the background SuperLink flwr starts."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local-simulation"\n\n[superlink.local-simulation]\n'
        'address = ":local:"\noptions.num-supernodes = 2\n'
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
    yield env
    pids = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.killpg(int(pid), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            os.kill(int(pid), signal.SIGTERM)


def flwr_run(env, run_config: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), "run", str(REPO), "local-simulation", "--stream",
         "--run-config", config_arg(run_config)],
        capture_output=True, text=True, env=env, timeout=1200,
    )


SIM_RUN = {**EMBEDDED_OVERRIDES, "num-server-rounds": 2, "local-steps": 20}


def test_simulation_trains_writes_a_complete_run_and_resumes(flwr_env, tmp_path):
    out = tmp_path / "outputs"
    result = flwr_run(flwr_env, {**SIM_RUN, "output-dir": str(out), "use-wandb": True})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    metrics = assert_run_outputs(run_dir, 2, ["partition_0", "partition_1"])
    assert server_eval(run_dir, 2) < server_eval(run_dir, 0)
    assert json.loads((run_dir / "run_config.json").read_text())["run-config"]["model"] == "embedded:tiny"
    assert metrics["rounds"][0]["lr"] > metrics["rounds"][1]["lr"]
    (wandb_record,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert b"client/partition_1/train-loss" in wandb_record.read_bytes()
    assert "Weights & Biases run" in (run_dir / "models" / "checkpoint_round_2" / "README.md").read_text()

    # A later run picks up from the round-2 checkpoint: it starts at round 3 from exactly that model.
    resumed_out = tmp_path / "resumed"
    result = flwr_run(flwr_env, {**SIM_RUN, "num-server-rounds": 3, "output-dir": str(resumed_out),
                                 "resume-from": str(run_dir / "models" / "checkpoint_round_2")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (resumed_dir,) = list(resumed_out.iterdir())
    rounds = json.loads((resumed_dir / "server" / "federated_metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [3]
    assert server_eval(resumed_dir, 2) == pytest.approx(server_eval(run_dir, 2), rel=1e-6)
    assert (resumed_dir / "models" / "checkpoint_round_3" / "model.safetensors").is_file()


def test_invalid_config_fails_the_run_before_round_one(flwr_env, tmp_path):
    out = tmp_path / "outputs"
    result = flwr_run(flwr_env, {**EMBEDDED_OVERRIDES, "num-server-rounds": 0, "output-dir": str(out)})
    assert "num-server-rounds must be an integer >= 1, got 0" in result.stdout + result.stderr
    assert not out.exists() or list(out.iterdir()) == [], "no outputs (and no checkpoint) for an invalid run"
