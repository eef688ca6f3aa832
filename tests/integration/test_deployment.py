"""(b) A real deployment: `fedvla demo` starts flower-superlink and SuperNodes as processes that talk gRPC on
127.0.0.1, submits the app with `flwr run`, and must leave a complete run behind."""

import json
import subprocess
import sys

import pytest

from app.learning import model
from app.learning.checkpoint import load_checkpoint
from app.common.config import EMBEDDED_OVERRIDES, RunConfig
from app.learning.evaluate import evaluate
from app.federation.global_model import GlobalModel
from tests.helpers import write_dataset_with
from tests.integration.conftest import REPO, assert_run_outputs, run_cli, server_eval

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`fedvla demo` under tests.reaper, which lists every process of the demo's tree still running after it exits."""
    out, leftovers = tmp_path_factory.mktemp("outputs"), tmp_path_factory.mktemp("reaper") / "leftovers.json"
    result = subprocess.run([sys.executable, "-m", "tests.reaper", str(leftovers), "--", sys.executable, "-m",
                             "app.cli", "demo", "--rounds", "2", "--local-steps", "30", "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return result, run_dir, json.loads(leftovers.read_text())


def test_demo_completes_and_prints_a_summary(demo_run):
    result, run_dir, _ = demo_run
    assert "finished:completed" in result.stdout
    assert f"outputs           {run_dir}" in result.stdout
    assert "checkpoint_round_2" in result.stdout


def test_outputs_layout_and_learning(demo_run):
    _, run_dir, _ = demo_run
    assert_run_outputs(run_dir, 2, ["operator_0", "operator_1"])
    assert server_eval(run_dir, 2) < server_eval(run_dir, 0)
    assert (run_dir / "processes" / "superlink.log").is_file()


def test_every_process_it_started_is_gone(demo_run):
    # SuperLink, SuperNodes, their workers, the ServerApp and ClientApp processes, `flwr` calls: any of them still
    # running once the demo has exited is in its process tree, whatever its command line.
    _, _, leftovers = demo_run
    assert leftovers == []


def test_final_checkpoint_reloads_and_reproduces_the_server_eval_loss(demo_run):
    _, run_dir, _ = demo_run
    policy, preprocessor, _ = load_checkpoint(run_dir / "models" / "checkpoint_round_2")
    run = RunConfig.from_mapping(EMBEDDED_OVERRIDES)
    server = GlobalModel.build(run)  # what the server evaluated on
    assert evaluate(policy, preprocessor, server.data.heldout, batch_size=8).loss == pytest.approx(server_eval(run_dir, 2), rel=1e-5)
    assert model.frozen_fingerprint(policy) == server.fingerprint


def test_predict_on_the_final_checkpoint_beats_the_base_model_on_a_held_out_episode(demo_run):
    import json

    _, run_dir, _ = demo_run
    result = run_cli("predict", str(run_dir / "models" / "checkpoint_round_2"), "--dataset", "embedded:server-eval",
                     "--episode", "0", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    trained, base = report["policies"]
    assert (trained["policy"], base["policy"]) == ("checkpoint_round_2", "embedded:tiny (base)")
    assert report["frames"] == 40 and len(trained["joint-error"]) == 6
    assert trained["mean-error"] < base["mean-error"]
    chart = run_dir / "predictions" / "checkpoint_round_2_embedded_server-eval_ep0.png"
    assert report["chart"] == str(chart) and chart.stat().st_size > 10_000
    from app.learning.checkpoint import verify_checkpoint

    verify_checkpoint(run_dir / "models" / "checkpoint_round_2")  # still sealed: nothing was written into it


def test_the_model_cards_loading_snippet_runs(demo_run, python):
    import re

    _, run_dir, _ = demo_run
    checkpoint = run_dir / "models" / "checkpoint_round_2"
    card = (checkpoint / "README.md").read_text()
    assert "![held-out loss by round](loss_chart.png)" in card and (checkpoint / "loss_chart.png").stat().st_size > 5000
    (snippet,) = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    snippet = re.sub(r'^checkpoint = ".*"', f"checkpoint = {str(checkpoint)!r}", snippet, flags=re.MULTILINE)
    snippet += "print(type(policy).__name__, type(preprocessor).__name__)\n"
    result = subprocess.run([python, "-c", snippet], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "SmolVLAPolicy DataProcessorPipeline"


def test_invalid_run_config_fails_before_anything_starts(tmp_path):
    result = run_cli("demo", "--run-config", "proximal-mu=-1", "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert "proximal-mu must be a number" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_node_with_a_bad_dataset_stops_before_joining(tmp_path):
    bad = write_dataset_with(tmp_path / "ds", drop=("observation.images.wrist",))
    result = run_cli("node", "--superlink", "127.0.0.1:9", "--insecure", "--dataset-uri", str(bad),
                     "--model", "embedded:tiny", timeout=300)
    assert result.returncode == 2
    assert "no camera 'observation.images.wrist'" in result.stderr
    assert "supernode_start" not in result.stderr
