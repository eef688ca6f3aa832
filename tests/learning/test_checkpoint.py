import json
import os

import pytest

from app.learning import checkpoint, model
from app.learning.evaluate import evaluate


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
        checkpoint.seal(tmp_path / f"checkpoint_round_{n}")
    (tmp_path / "checkpoint_round_20").mkdir()
    (tmp_path / "checkpoint_round_20" / "model.safetensors").write_text("x")  # no manifest: never sealed
    (tmp_path / ".checkpoint_round_30-tmp").mkdir()
    assert [n for n, _ in checkpoint.list_checkpoints(tmp_path)] == [2, 10]


def test_checkpoint_round_comes_from_its_metrics(tmp_path):
    from app.common.errors import UserError

    (tmp_path / "metrics.json").write_text('{"round": 4}')
    assert checkpoint.checkpoint_round(tmp_path) == 4
    with pytest.raises(UserError, match="no round in metrics.json"):
        checkpoint.checkpoint_round(tmp_path / "nowhere")


def _sealed(directory, content: str = "weights"):
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_text(content)
    (directory / "config.json").write_text("{}")
    checkpoint.seal(directory)
    return directory


def test_the_manifest_names_every_file_with_its_size_and_hash(tmp_path):
    directory = _sealed(tmp_path / "checkpoint_round_1")
    files = json.loads((directory / "manifest.json").read_text())["files"]
    assert sorted(files) == ["config.json", "model.safetensors"]
    assert files["model.safetensors"]["bytes"] == len("weights") and len(files["model.safetensors"]["sha256"]) == 64
    checkpoint.verify_checkpoint(directory)


@pytest.mark.parametrize(("damage", "why"), [
    (lambda d: (d / "model.safetensors").write_text("weighte"), "model.safetensors does not match its SHA-256"),
    (lambda d: (d / "model.safetensors").write_text("weig"), "model.safetensors has 4 bytes, the manifest says 7"),
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
])
def test_a_damaged_checkpoint_is_named_and_not_loaded(tmp_path, damage, why):
    directory = _sealed(tmp_path / "checkpoint_round_1")
    damage(directory)
    with pytest.raises(checkpoint.CheckpointError, match=why):
        checkpoint.load_checkpoint(directory)


def test_a_corrupt_checkpoint_gives_way_to_the_newest_earlier_one_that_verifies(tmp_path):
    for n in (1, 2, 3):
        _sealed(tmp_path / f"checkpoint_round_{n}")
    (tmp_path / "checkpoint_round_3" / "model.safetensors").write_text("flipped")
    (tmp_path / "checkpoint_round_2" / "model.safetensors").write_text("flipped")
    assert checkpoint.usable_checkpoint(tmp_path / "checkpoint_round_3") == tmp_path / "checkpoint_round_1"
    assert checkpoint.usable_checkpoint(tmp_path / "checkpoint_round_1") == tmp_path / "checkpoint_round_1"
    (tmp_path / "checkpoint_round_1" / "config.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="no earlier checkpoint beside it verifies"):
        checkpoint.usable_checkpoint(tmp_path / "checkpoint_round_3")


def _interrupt_between_renames(target):
    """What a save replacing `target` leaves when killed between its two renames: the old version aside, no target."""
    os.replace(target, target.with_name(f".{target.name}-retired"))


def test_a_replacement_killed_between_its_renames_loses_nothing(tmp_path):
    for n in (1, 2):
        _sealed(tmp_path / f"checkpoint_round_{n}", content=f"round {n}")
    _interrupt_between_renames(tmp_path / "checkpoint_round_2")
    assert checkpoint.usable_checkpoint(tmp_path / "checkpoint_round_2") == tmp_path / "checkpoint_round_2"
    assert (tmp_path / "checkpoint_round_2" / "model.safetensors").read_text() == "round 2"
    assert not (tmp_path / ".checkpoint_round_2-retired").exists()


def test_the_save_after_an_interrupted_replacement_keeps_the_old_version_until_the_new_one_is_in(tmp_path):
    target = tmp_path / "checkpoint_round_1"
    checkpoint.write_directory_atomic(target, lambda d: (d / "model.safetensors").write_text("old"))
    _interrupt_between_renames(target)

    def crash(directory):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.write_directory_atomic(target, crash)
    assert (target / "model.safetensors").read_text() == "old"
    checkpoint.write_directory_atomic(target, lambda d: (d / "model.safetensors").write_text("new"))
    assert (target / "model.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_round_1"]
