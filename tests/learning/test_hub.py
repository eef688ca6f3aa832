import subprocess
import sys

import pytest

from app.common.config import RunConfig
from app.common.errors import UserError
from tests.fakes.hub import FakeHub

TOKEN = "hf_" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0"


@pytest.fixture
def checkpoint_dir(tmp_path):
    directory = tmp_path / "run" / "models" / "checkpoint_round_10"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"weights")
    (directory / "config.json").write_text("{}")
    (directory / "README.md").write_text("# card")
    return directory


@pytest.mark.parametrize(
    ("rounds", "interval", "repo", "push"),
    [(10, 10, "me/m", True), (30, 10, "me/m", True), (2, 10, "me/m", False), (30, 10, "", False)],
)
def test_push_gating(rounds, interval, repo, push):
    from app.learning.hub import should_push

    run = RunConfig.from_mapping({"num-server-rounds": rounds, "checkpoint-interval": interval, "hf-repo-id": repo})
    assert should_push(run) is push


def test_push_needs_a_token(checkpoint_dir, monkeypatch):
    from app.learning.hub import push_checkpoint

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UserError, match="HF_TOKEN is not set"):
        push_checkpoint(checkpoint_dir, "me/model")


def test_push_command_uploads_with_the_token_and_never_logs_it(checkpoint_dir, tmp_path):
    log_file = tmp_path / "push.log"
    with FakeHub() as hub:
        env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "PATH": "/usr/bin:/bin",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HOME": str(tmp_path)}
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "--log-level", "DEBUG", "push", str(checkpoint_dir),
             "--repo-id", "me/smolvla-fl"],
            capture_output=True, text=True, env=env, timeout=120,
        )
        log_file.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    assert hub.files["me/smolvla-fl"]["model.safetensors"] == b"weights"
    assert hub.created["me/smolvla-fl"]["visibility"] == "private", "a push publishes nothing unless asked to"
    assert set(hub.files["me/smolvla-fl"]) == {"model.safetensors", "config.json", "README.md"}
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)
    assert TOKEN not in log_file.read_text()
    assert "me/smolvla-fl" in log_file.read_text()


def test_push_command_takes_the_repo_from_the_run(checkpoint_dir):
    (checkpoint_dir.parent.parent / "run_config.json").write_text('{"run-config": {"hf-repo-id": ""}}')
    result = subprocess.run([sys.executable, "-m", "app.cli", "push", str(checkpoint_dir)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pass --repo-id" in result.stderr


@pytest.mark.parametrize(("flags", "run_config", "private"), [
    ([], None, True),
    (["--public"], None, False),
    ([], {"hf-repo-id": "me/m", "hf-private": False}, False),
    (["--private"], {"hf-repo-id": "me/m", "hf-private": False}, True),
    ([], {"hf-repo-id": "me/m"}, True),
])
def test_push_command_publishes_only_when_told(checkpoint_dir, monkeypatch, flags, run_config, private):
    import json

    from app import cli
    if run_config is not None:
        (checkpoint_dir.parent.parent / "run_config.json").write_text(json.dumps({"run-config": run_config}))
    pushed = []
    monkeypatch.setattr("app.learning.hub.push_checkpoint", lambda directory, repo_id, private: pushed.append(private) or "url")
    assert cli.main(["push", str(checkpoint_dir), "--repo-id", "me/m", *flags]) == 0
    assert pushed == [private]
