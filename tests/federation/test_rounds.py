"""app.federation.rounds: when a round checkpoints, early stop, the Hub-token check before round 1, and
`stats-fraction` (the ServerApp asks a seeded sample of the connected nodes for their normalization stats)."""

import pytest

from app.common.config import RunConfig
from app.common.errors import ConfigError
from app.federation.rounds import EarlyStop, should_checkpoint


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


def test_a_hub_push_without_a_token_fails_before_round_one(monkeypatch):
    from app.federation.rounds import federate

    monkeypatch.delenv("HF_TOKEN", raising=False)
    run = RunConfig.from_mapping({"hf-repo-id": "me/model", "num-server-rounds": 10, "checkpoint-interval": 10})
    with pytest.raises(ConfigError, match="HF_TOKEN is not set"):
        federate(grid=None, run=run, outputs=None, run_config={})


class StatsGrid:
    """`connected` nodes; each answers a stats query with its own id as its stats."""

    def __init__(self, connected: int):
        self.connected = list(range(101, 101 + connected))
        self.asked: list[int] = []
        self.sent = []

    def get_node_ids(self):
        return self.connected

    def push_messages(self, messages):
        self.sent = list(messages)
        for msg in self.sent:  # as Flower's grid stamps a pushed message with its id
            msg.metadata.__dict__["_message_id"] = f"m{msg.metadata.dst_node_id}"
        self.asked = [msg.metadata.dst_node_id for msg in self.sent]
        return [msg.metadata.message_id for msg in self.sent]

    def pull_messages(self, message_ids):
        from flwr.app import ConfigRecord, Message, RecordDict

        return [Message(RecordDict({"norm-stats": ConfigRecord({"node": float(msg.metadata.dst_node_id)})}),
                        reply_to=msg) for msg in self.sent if msg.metadata.message_id in message_ids]


@pytest.fixture
def ask(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from app.federation import exchange, rounds

    monkeypatch.setattr(exchange, "REPLY_POLL_SECONDS", 0.0)
    monkeypatch.setattr(rounds, "federated_stats", lambda per_node: sorted(int(s["node"]) for s in per_node))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def collect(connected: int, **settings) -> tuple[list[int], StatsGrid]:
        grid = StatsGrid(connected)
        run = RunConfig.from_mapping({"min-available-nodes": connected, **settings})
        return rounds.collect_federated_stats(grid, run, "fingerprint"), grid

    yield collect
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def test_every_connected_node_is_asked_by_default(ask):
    merged, grid = ask(50)
    assert sorted(grid.asked) == grid.connected and merged == grid.connected


def test_a_stats_fraction_asks_a_seeded_sample_and_merges_only_its_replies(ask):
    merged, grid = ask(50, **{"stats-fraction": 0.1})
    assert len(grid.asked) == 5 and set(grid.asked) <= set(grid.connected)
    assert merged == sorted(grid.asked)
    again, _ = ask(50, **{"stats-fraction": 0.1})
    other_seed, _ = ask(50, **{"stats-fraction": 0.1, "seed": 7})
    assert again == merged and other_seed != merged


def test_the_sample_is_at_least_min_train_nodes(ask):
    _, grid = ask(50, **{"stats-fraction": 0.01, "min-train-nodes": 8})
    assert len(grid.asked) == 8


@pytest.mark.parametrize("value", [0.0, 1.5, "some"])
def test_a_bad_stats_fraction_names_the_key(value):
    with pytest.raises(ConfigError, match="stats-fraction"):
        RunConfig.from_mapping({"stats-fraction": value})
