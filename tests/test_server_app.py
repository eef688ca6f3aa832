import pytest
import torch

from app import checkpoint, model
from app.config import RunConfig
from app.errors import ConfigError
from app.server_app import EarlyStop, resume, should_checkpoint


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


class _Server:
    """What resume() needs of the server's Learner: its policy, config and frozen-base fingerprint."""

    def __init__(self, policy, config):
        self.policy, self.config, self.fingerprint = policy, config, model.frozen_fingerprint(policy)


def _saved(tmp_path, policy, config, stats, round_, shift_frozen=False):
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad or shift_frozen:
                p.add_(0.25)
    pre, post = model.build_processors(config, stats)
    return checkpoint.save_checkpoint(tmp_path / f"checkpoint_round_{round_}", policy, pre, post, {"round": round_}, "#")


def test_resume_loads_the_checkpoint_weights_and_returns_its_round(tmp_path, tiny_config, operator0):
    trained = model.build_policy("embedded:tiny", tiny_config)
    directory = _saved(tmp_path, trained, tiny_config, operator0.meta.stats, 4)
    server = _Server(model.build_policy("embedded:tiny", tiny_config), tiny_config)
    run = RunConfig.from_mapping({"model": "embedded:tiny", "num-server-rounds": 6, "resume-from": str(directory)})
    assert resume(server, run) == 4
    for name, value in model.trainable_state(trained).items():
        assert torch.equal(model.trainable_state(server.policy)[name], value)
    with pytest.raises(ConfigError, match="at round 4; set num-server-rounds above it"):
        resume(server, RunConfig.from_mapping({"num-server-rounds": 4, "resume-from": str(directory)}))
    assert resume(server, RunConfig.from_mapping({})) == 0


def test_resume_from_a_corrupt_checkpoint_continues_from_the_previous_one(tmp_path, tiny_config, operator0):
    policy = model.build_policy("embedded:tiny", tiny_config)
    _saved(tmp_path, policy, tiny_config, operator0.meta.stats, 2)
    latest = _saved(tmp_path, policy, tiny_config, operator0.meta.stats, 4)
    with open(latest / "model.safetensors", "r+b") as f:  # one byte flipped on disk
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    server = _Server(model.build_policy("embedded:tiny", tiny_config), tiny_config)
    run = RunConfig.from_mapping({"num-server-rounds": 6, "resume-from": str(latest)})
    assert resume(server, run) == 2


def test_resume_refuses_a_checkpoint_of_another_base(tmp_path, tiny_config, operator0):
    other = _saved(tmp_path, model.build_policy("embedded:tiny", tiny_config), tiny_config, operator0.meta.stats, 2,
                   shift_frozen=True)
    server = _Server(model.build_policy("embedded:tiny", tiny_config), tiny_config)
    run = RunConfig.from_mapping({"num-server-rounds": 5, "resume-from": str(other)})
    with pytest.raises(ConfigError, match="another base model"):
        resume(server, run)


def test_a_hub_push_without_a_token_fails_before_round_one(monkeypatch):
    from app.server_app import federate

    monkeypatch.delenv("HF_TOKEN", raising=False)
    run = RunConfig.from_mapping({"hf-repo-id": "me/model", "num-server-rounds": 10, "checkpoint-interval": 10})
    with pytest.raises(ConfigError, match="HF_TOKEN is not set"):
        federate(grid=None, run=run, outputs=None, run_config={})


class SlowGrid:
    """Replies to the messages of node 1 at once; node 2 never answers."""

    def __init__(self):
        self.sent = []

    def push_messages(self, messages):
        self.sent = list(messages)
        for msg in self.sent:  # as Flower's grid stamps a pushed message with its id
            msg.metadata.__dict__["_message_id"] = f"m{msg.metadata.dst_node_id}"
        return [msg.metadata.message_id for msg in self.sent]

    def pull_messages(self, message_ids):
        from flwr.app import Message, RecordDict

        return [Message(RecordDict(), reply_to=msg) for msg in self.sent
                if msg.metadata.dst_node_id == 1 and msg.metadata.message_id in message_ids]


class BusyGrid(SlowGrid):
    """A SuperLink whose state database is locked for its first `busy` pulls: a 500, as Flower's HTTP grid raises."""

    def __init__(self, busy: int, status: int = 500):
        super().__init__()
        self.busy, self.status = busy, status

    def pull_messages(self, message_ids):
        import httpx

        if self.busy:
            self.busy -= 1
            request = httpx.Request("POST", "https://127.0.0.1:9091/v1/runtime/pull-messages")
            raise httpx.HTTPStatusError("database is locked", request=request,
                                        response=httpx.Response(self.status, request=request))
        return super().pull_messages(message_ids)


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def two_messages():
    from flwr.app import Message, RecordDict

    return [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (1, 2)]


def test_send_and_receive_hands_over_what_came_back_by_the_deadline_and_returns_who_was_silent(task_identity):
    from app.server_app import send_and_receive

    replies = []
    silent = send_and_receive(SlowGrid(), two_messages(), timeout=0.6, on_reply=replies.append)
    assert len(replies) == 1 and silent == [2]


def test_a_message_sent_in_a_replys_place_is_awaited_within_the_same_deadline(task_identity):
    from flwr.app import Message, RecordDict

    from app.server_app import send_and_receive

    grid, replies = SlowGrid(), []

    def resend_once(reply):
        replies.append(reply)
        if len(replies) == 1:
            return Message(RecordDict(), dst_node_id=1, message_type="train")
        return None

    silent = send_and_receive(grid, two_messages(), timeout=0.8, on_reply=resend_once)
    assert len(replies) == 2 and [m.metadata.dst_node_id for m in grid.sent] == [1], "the follow-up was pushed"
    assert silent == [2]


def test_a_busy_superlink_is_asked_again_at_the_next_poll(task_identity):
    from app.server_app import send_and_receive

    replies = []
    silent = send_and_receive(BusyGrid(busy=2), two_messages(), timeout=1.5, on_reply=replies.append)
    assert len(replies) == 1 and silent == [2]


def test_a_client_error_from_the_superlink_still_ends_the_round(task_identity):
    import httpx

    from app.server_app import send_and_receive

    with pytest.raises(httpx.HTTPStatusError):
        send_and_receive(BusyGrid(busy=1, status=403), two_messages(), timeout=1.5, on_reply=[].append)
