"""app.ops.submit: a run followed to its real outcome across a SuperLink that is away for a while. Flower's CLI is
stood in for by answers in the shape `flwr --format json` gives (the compose test submits through the real one)."""

from __future__ import annotations

import pytest

from app.ops import submit

DOWN = {"success": False, "error-message": "Connection to the SuperLink is unavailable."}


class Flower:
    """Answers `flwr run` with a run id and each `flwr ls` with the next of `statuses` (None: the SuperLink is
    down)."""

    def __init__(self, statuses):
        self.statuses, self.asked = list(statuses), []

    def __call__(self, *args, connection=""):
        self.asked.append(args)
        if args[0] == "run":
            return {"success": True, "run-id": 42}
        status = self.statuses.pop(0)
        return DOWN if status is None else {"success": True, "runs": [{"run-id": 42, "status": status}]}


def test_a_run_is_followed_across_a_superlink_restart_to_its_real_outcome():
    flower = Flower(["running", None, None, "running", "finished:completed"])
    assert submit.submit("/app", "fedvla-compose", "lr=0.1", ask=flower) == 42
    assert submit.follow(42, "fedvla-compose", reconnect_seconds=60, poll_seconds=0, ask=flower) == "finished:completed"
    assert flower.asked[0] == ("run", "/app", "fedvla-compose", "--run-config", "lr=0.1")
    assert flower.asked[1] == ("ls", "fedvla-compose", "--run-id", "42")


def test_a_failed_run_is_reported_as_failed():
    flower = Flower(["finished:failed"])
    assert submit.follow(42, "", reconnect_seconds=60, poll_seconds=0, ask=flower) == "finished:failed"


def test_a_superlink_away_for_longer_than_allowed_ends_in_one_line():
    flower = Flower([None] * 1000)
    with pytest.raises(submit.SubmitError, match="gave no answer for 0.05 s while run 42 was going on"):
        submit.follow(42, "", reconnect_seconds=0.05, poll_seconds=0.01, ask=flower)


def test_a_run_flower_refuses_is_one_line_naming_flowers_reason(capsys, monkeypatch):
    monkeypatch.setattr(submit, "ask_flwr", lambda *args, connection="": DOWN)
    assert submit.main(["/app", "fedvla-compose"]) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert line == "submit: error: `flwr run` did not submit the run: Connection to the SuperLink is unavailable."
