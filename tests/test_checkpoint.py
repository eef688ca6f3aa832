import json

import pytest

from app import checkpoint, model
from app.evaluate import evaluate


def test_reloaded_checkpoint_reproduces_the_recorded_eval_loss(tmp_path, tiny_policy, tiny_config, operator0):
    pre, post = model.build_processors(tiny_config, operator0.meta.stats)
    loss = evaluate(tiny_policy, pre, operator0.heldout).loss
    target = checkpoint.save_checkpoint(tmp_path / "ckpt", tiny_policy, pre, post, {"loss": loss}, "# card")
    assert json.loads((target / "metrics.json").read_text())["loss"] == loss
    policy, pre2, _ = checkpoint.load_checkpoint(target)
    assert evaluate(policy, pre2, operator0.heldout).loss == pytest.approx(loss, rel=1e-6)


def test_failed_write_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "checkpoint_round_10"
    checkpoint.write_directory_atomic(target, lambda d: (d / "model.safetensors").write_text("old"))

    def crash(directory):
        (directory / "model.safetensors").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.write_directory_atomic(target, crash)
    assert (target / "model.safetensors").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_round_10"]


def test_list_checkpoints_ignores_incomplete_ones(tmp_path):
    for n in (2, 10):
        (tmp_path / f"checkpoint_round_{n}").mkdir()
        (tmp_path / f"checkpoint_round_{n}" / "model.safetensors").write_text("x")
    (tmp_path / "checkpoint_round_20").mkdir()
    (tmp_path / ".checkpoint_round_30-tmp").mkdir()
    assert [n for n, _ in checkpoint.list_checkpoints(tmp_path)] == [2, 10]


def test_checkpoint_round_comes_from_its_metrics(tmp_path):
    from app.errors import UserError

    (tmp_path / "metrics.json").write_text('{"round": 4}')
    assert checkpoint.checkpoint_round(tmp_path) == 4
    with pytest.raises(UserError, match="no round in metrics.json"):
        checkpoint.checkpoint_round(tmp_path / "nowhere")
