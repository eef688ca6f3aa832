"""(a) Flower's simulation engine: `flwr run . local-simulation` with virtual SuperNodes, one per embedded operator."""

import json

import pytest

from app.common.config import EMBEDDED_OVERRIDES
from tests.integration.conftest import (assert_run_outputs, flwr_run, flwr_statuses, local_simulation, server_eval,
                                        stop_local_superlink)

pytestmark = pytest.mark.integration


@pytest.fixture
def flwr_env(tmp_path):
    home = tmp_path / "flwr-home"
    yield local_simulation(home, num_supernodes=2)
    stop_local_superlink(home)


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
    assert result.returncode == 0, result.stderr[-3000:]  # the submission and its log stream worked
    assert "num-server-rounds must be an integer >= 1, got 0" in result.stdout + result.stderr
    assert flwr_statuses(flwr_env) == ["finished:failed"]
    assert not out.exists() or list(out.iterdir()) == [], "no outputs (and no checkpoint) for an invalid run"
