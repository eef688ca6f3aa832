"""The command line as a user meets it: real subprocesses, real exit codes, one-line errors."""

import subprocess
import sys

import pytest

from tests.helpers import write_dataset_with


def fedvla(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def fedvla_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """`fedvla` in this process (torch is imported already), as a subprocess' result."""
    from app import cli

    code = cli.main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.fixture
def no_hub(monkeypatch):
    """A Hub that cannot be reached (nothing listens on its port), with offline mode off: nothing is fetched."""
    from huggingface_hub import constants

    from app.ops.launch import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return endpoint


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0]


def test_help_is_fast_and_lists_commands():
    result = fedvla("--help")
    assert result.returncode == 0
    for command in ("train", "node", "demo", "check", "predict", "status", "push", "certs", "keys"):
        assert command in result.stdout, command
    loaded = subprocess.run([sys.executable, "-c", "import sys, app.cli; app.cli.build_parser(); "
                             "print(sorted(m for m in ('torch', 'lerobot', 'flwr') if m in sys.modules))"],
                            capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[]", "the command line imports no heavy library before a command runs"


def test_non_integer_steps():
    assert_one_line_error(fedvla("train", "--embedded", "--steps", "ten"), "--steps: expected a positive integer, got 'ten'")


def test_missing_dataset_path(tmp_path):
    assert_one_line_error(fedvla("train", "--embedded", "--dataset", str(tmp_path / "nowhere")), "does not exist")


def test_training_on_a_dataset_that_does_not_fit_stops_in_one_line_and_leaves_nothing(tmp_path):
    root = write_dataset_with(tmp_path / "ds", drop=("observation.state",))
    result = fedvla("train", "--embedded", "--dataset", str(root), "--output-dir", str(tmp_path / "out"))
    assert_one_line_error(result, "no 'observation.state' feature")
    assert not (tmp_path / "out").exists(), "a failed validation must not leave a run directory"


def test_check_names_every_way_a_dataset_does_not_fit(tmp_path):
    root = write_dataset_with(tmp_path / "ds", drop=("observation.images.front",), action_dim=4)
    result = fedvla("check", str(root), "--model", "embedded:tiny", "--cameras", "", "--camera-map", "")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "no  no camera 'observation.images.front'" in result.stdout
    assert "no  'action' has shape (4,), the policy expects (6,)" in result.stdout


def test_standalone_training_end_to_end(tmp_path):
    result = fedvla("train", "--embedded", "--steps", "20", "--eval-every", "10", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out loss  initial" in result.stdout
    (run_dir,) = tmp_path.iterdir()
    assert str(run_dir) in result.stdout
    for name in ("train.log", "metrics.json", "loss_chart.png", "models/final/model.safetensors",
                 "models/final/policy_preprocessor.json", "models/final/README.md"):
        assert (run_dir / name).is_file(), name
    for name in ("README.md", "metrics.json"):  # what a push publishes names no path of this machine
        assert str(tmp_path) not in (run_dir / "models" / "final" / name).read_text(), name


def test_node_check_with_a_camera_map(tmp_path):
    root = write_dataset_with(tmp_path / "ds", rename={"front": "top"})
    base = ["node", "--superlink", "127.0.0.1:9", "--insecure", "--dataset-uri", str(root), "--model", "embedded:tiny",
            "--cameras", "", "--check-only"]
    assert_one_line_error(fedvla(*base, "--camera-map", ""), "map one of yours onto it with camera-map, e.g. 'top=front'")
    ok = fedvla(*base, "--camera-map", "top=front")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "node_dataset_ok" in ok.stderr


def test_run_config_overrides_take_quoted_values_with_spaces():
    from app.cli.demo import parse_overrides

    assert parse_overrides('hf-repo-id="me/a model" lr=0.001 use-wandb=true') == {
        "hf-repo-id": "me/a model", "lr": 0.001, "use-wandb": True}
    assert parse_overrides("") == {}


def test_log_level_in_any_case():
    assert_one_line_error(fedvla("--log-level", "debug", "demo", "--nodes", "9"), "--nodes must be between 2 and 4")
    assert_one_line_error(fedvla("--log-level", "loud", "demo"), "invalid choice: 'LOUD'")


def test_a_malformed_run_config_is_one_line():
    assert_one_line_error(fedvla("demo", "--run-config", "lr=0.1 name=unquoted words"), "is not 'key=value ...'")


def test_the_demo_shows_a_line_per_round_and_problems_in_one_line_each():
    from app.cli.demo import server_event_line

    done = {"event": "round_done", "round": 2, "wall-seconds": 26.9, "train-loss": 0.97946, "server-eval-loss": 2.1}
    assert server_event_line(done, rounds=3) == ("[bold]round 2/3 done[/bold] in 27 s: train loss 0.9795, "
                                                 "server eval loss 2.1000")
    for covered_by_the_table in ("round_start", "checkpoint_saved", "run_done"):
        assert server_event_line({"event": covered_by_the_table, "round": 1}, rounds=3) is None
    dropped = {"event": "reply_dropped", "kind": "train", "round": 2, "node_id": 7, "why": "norm [too large]"}
    assert server_event_line(dropped, rounds=3).endswith(r"norm \[too large]")  # free text is not rich markup
    failed = {"event": "run_failed", "outputs": "/out/run", "exception": [
        {"exc_type": "ValueError", "exc_value": "bad update"}, {"exc_type": "KeyError", "exc_value": "'x'"}]}
    line = server_event_line(failed, rounds=3)
    assert "\n" not in line and "ValueError: bad update" in line and "/out/run/run.log" in line


def test_check_says_what_fits_what_does_not_and_the_camera_map_that_fixes_it(tmp_path):
    import json

    root = write_dataset_with(tmp_path / "ds", rename={"front": "top"}, fps=15)
    settings = ("--model", "embedded:tiny", "--cameras", "", "--camera-map", "")
    result = fedvla("check", str(root), *settings)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "ok  'action' has shape (6,)" in result.stdout
    assert "no  no camera 'observation.images.front' (it has ['top', 'wrist'])" in result.stdout
    assert "fix: --camera-map top=front" in result.stdout
    assert "fix: the federation's fps=15" in result.stdout
    assert result.stdout.rstrip().endswith("does not fit")
    report = json.loads(fedvla("check", str(root), *settings, "--json").stdout)
    assert report["ok"] is False and report["fit"]["camera_map"] == "top=front" and report["fit"]["fps"] == 15
    fixed = fedvla("check", str(root), "--model", "embedded:tiny", "--cameras", "", "--camera-map", "top=front",
                   "--fps", "15")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr[-2000:]
    assert "first and last episodes decode" in fixed.stdout and fixed.stdout.rstrip().endswith("fits")


def test_status_of_an_unreachable_superlink_exits_1_with_flowers_reason(tmp_path):
    import os

    (tmp_path / "config.toml").write_text('[superlink]\ndefault = "remote"\n\n[superlink.remote]\n'
                                          'address = "127.0.0.1:1"\ninsecure = true\n')
    result = subprocess.run([sys.executable, "-m", "app.cli", "status"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "FLWR_HOME": str(tmp_path)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unreachable" in result.stdout and "Connection to the SuperLink is unavailable" in result.stdout


def test_status_without_a_flower_configuration_answers_in_one_line_and_writes_nothing(tmp_path):
    import os

    home = tmp_path / "flwr-home"
    result = subprocess.run([sys.executable, "-m", "app.cli", "status", "127.0.0.1:1"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "FLWR_HOME": str(home)})
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stdout.strip().splitlines()
    assert "unreachable" in line and f"{home / 'config.toml'} does not exist" in line
    assert not home.exists(), "status leaves no Flower configuration behind"


def test_a_dataset_that_is_not_there_is_named_before_any_model_is_fetched(tmp_path, capsys, no_hub):
    # the default model, lerobot/smolvla_base, is not cached here and cannot be fetched: its error would come first
    assert_one_line_error(fedvla_here(capsys, "check", str(tmp_path / "missing")), "does not exist: check the path")
    assert_one_line_error(fedvla_here(capsys, "train", "--dataset", "/etc", "--steps", "1"),
                          "is not a LeRobot dataset (no meta/info.json)")
    assert_one_line_error(fedvla_here(capsys, "check", "hf:me/bad..name"), "a Hub dataset is hf:<owner>/<name>")


def test_an_unreachable_hub_fails_once_in_one_line_naming_the_ways_out(capsys, monkeypatch, no_hub):
    from huggingface_hub import constants

    result = fedvla_here(capsys, "check", "embedded:operator-0", "--model", "someone/not-cached")
    assert_one_line_error(result, f"model 'someone/not-cached' is not in this machine's Hugging Face cache and the "
                                  f"Hub ({no_hub}) cannot be reached")
    assert "HF_HUB_OFFLINE=1" in result.stderr and "local directory" in result.stderr
    result = fedvla_here(capsys, "check", "hf:someone/not-cached", "--model", "embedded:tiny")
    assert_one_line_error(result, "dataset 'hf:someone/not-cached' is not in this machine's Hugging Face cache")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = fedvla_here(capsys, "check", "embedded:operator-0", "--model", "someone/not-cached")
    assert_one_line_error(result, "is not in this machine's Hugging Face cache and HF_HUB_OFFLINE is set")
