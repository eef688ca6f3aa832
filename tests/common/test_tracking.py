import time

from app.common.tracking import WandbTracker


def _written(record, marker: bytes, seconds: float = 20.0) -> bytes:
    """The offline run file's bytes once `marker` is in them (W&B's service writes it from another process)."""
    deadline = time.monotonic() + seconds
    while marker not in (data := record.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return data


def test_rounds_are_logged_to_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = WandbTracker(tmp_path, {"lr": 1e-3, "model": "embedded:tiny"}, name="test-run")
    tracker.log_initial(2.5)
    tracker.log_round({
        "round": 1, "lr": 1e-3, "wall-seconds": 3.0, "max-compute-seconds": 1.0, "train-loss": 0.9,
        "client-eval-loss": None, "server-eval-loss": 2.0, "dropped": [],
        "nodes": {"op0": {"train-loss": 0.8, "eval-loss": None, "bytes-sent": 10}},
    })
    tracker.finish()
    (record,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data = _written(record, b"client/op0/bytes-sent")
    for key in (b"federation/server-eval-loss", b"federation/train-loss", b"client/op0/train-loss",
                b"client/op0/bytes-sent"):
        assert key in data, key
    assert b"client/op0/eval-loss" not in data  # missing values are left out, not logged as null
    assert b"x" * 40 not in data


def test_missing_values_do_not_break_logging(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = WandbTracker(tmp_path, {}, name="empty")
    tracker.log_round({"round": 2, "nodes": {}, "dropped": ["x"]})
    tracker.finish()
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 1
