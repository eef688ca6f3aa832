from app.config import RunConfig
from app.server_app import EarlyStop, should_checkpoint


def test_checkpoints_every_interval_and_the_final_round():
    run = RunConfig.from_mapping({"num-server-rounds": 25, "checkpoint-interval": 10})
    assert [r for r in range(1, 26) if should_checkpoint(r, run, False)] == [10, 20, 25]


def test_tiny_run_saves_only_its_final_round():
    run = RunConfig.from_mapping({"num-server-rounds": 2, "checkpoint-interval": 10})
    assert [r for r in range(1, 3) if should_checkpoint(r, run, False)] == [2]


def test_early_stop_saves_the_round_it_stops_at():
    run = RunConfig.from_mapping({"num-server-rounds": 50, "checkpoint-interval": 10})
    assert should_checkpoint(13, run, stopping=True)


def test_early_stop_waits_for_patience_evaluations_without_improvement():
    stop = EarlyStop(patience=2, min_delta=0.01)
    assert [stop.should_stop(loss) for loss in (1.0, 0.9, 0.895, 0.899, 0.5)] == [False, False, False, True, False]


def test_patience_zero_never_stops():
    stop = EarlyStop(patience=0, min_delta=0.0)
    assert not any(stop.should_stop(1.0) for _ in range(10))
