"""app.federation.exchange: messages out, replies in by the deadline, a busy SuperLink asked again."""

import pytest


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
    from app.federation.exchange import send_and_receive

    replies = []
    silent = send_and_receive(SlowGrid(), two_messages(), timeout=0.6, on_reply=replies.append)
    assert len(replies) == 1 and silent == [2]


def test_a_message_sent_in_a_replys_place_is_awaited_within_the_same_deadline(task_identity):
    from flwr.app import Message, RecordDict

    from app.federation.exchange import send_and_receive

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
    from app.federation.exchange import send_and_receive

    replies = []
    silent = send_and_receive(BusyGrid(busy=2), two_messages(), timeout=1.5, on_reply=replies.append)
    assert len(replies) == 1 and silent == [2]


def test_a_client_error_from_the_superlink_still_ends_the_round(task_identity):
    import httpx

    from app.federation.exchange import send_and_receive

    with pytest.raises(httpx.HTTPStatusError):
        send_and_receive(BusyGrid(busy=1, status=403), two_messages(), timeout=1.5, on_reply=[].append)
