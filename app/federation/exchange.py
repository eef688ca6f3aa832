"""Messages out, replies in: the server's side of Flower's Grid, with the limits a real federation needs.

`wait_for_nodes` waits for enough SuperNodes, saying which known ones are missing, and gives up after
`node-wait-timeout` (Flower's own wait has no limit). `Exchange` is `Grid.send_and_receive` in two halves, so the
server can do its own work while the nodes work on the messages, and hands each reply on as it arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flwr.app import Message
from flwr.serverapp import Grid

from app.common.telemetry import get_logger

log = get_logger(__name__)
REPLY_POLL_SECONDS = 0.25


def pull_replies(grid: Grid, message_ids: set[str]) -> list[Message]:
    """The replies that have come in, or none this time when the SuperLink answers with a server error: on a loaded
    machine its SQLite state can stay locked past Flower's 5 s busy timeout ("database is locked"), and a pull that
    failed delivered nothing, so the next poll asks again. Other errors end the run as before."""
    import httpx

    try:
        return list(grid.pull_messages(message_ids))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code < 500:
            raise
        log.warning("superlink_busy", status=exc.response.status_code, url=str(exc.request.url),
                    then="asking again at the next poll")
        return []


class Exchange:
    """Messages out, their replies in: `Grid.send_and_receive` in two halves, so the server can do its own work (the
    last round's evaluation and checkpoint) while the nodes work on the messages. `collect` hands each reply to
    `on_reply` as it arrives (so a round's replies need not all be in memory at once), looking for replies every
    REPLY_POLL_SECONDS instead of Flower's 3 s, which would add 1.5 s on average to every round of a few seconds."""

    def __init__(self, grid: Grid, messages: list[Message], timeout: float):
        self.grid, self.sent = grid, len(messages)
        self.started = time.monotonic()
        self.deadline = self.started + timeout  # from the send: the server's own work counts against it
        self.pending: dict[str, int] = {}  # message id -> node id
        self.unsent: list[int] = []
        self.push(messages)

    def push(self, batch: list[Message]) -> None:
        message_ids = list(self.grid.push_messages(batch))  # in the order of `batch`; None where a push failed
        for mid, msg in zip(message_ids, batch, strict=True):
            if mid is None:
                self.unsent.append(msg.metadata.dst_node_id)
            else:
                self.pending[mid] = msg.metadata.dst_node_id

    def collect(self, on_reply: Callable[[Message], Message | None]) -> list[int]:
        """Hand replies to `on_reply` until all are in or the deadline passes; a message `on_reply` returns is sent
        in the reply's place, within the same deadline. Returns the ids of the nodes that sent no reply in time (a
        node that is gone replies with an error once Flower's heartbeat notices)."""
        received = 0
        while self.pending and time.monotonic() < self.deadline:
            time.sleep(REPLY_POLL_SECONDS)
            for reply in pull_replies(self.grid, set(self.pending)):
                self.pending.pop(reply.metadata.reply_to_message_id, None)
                received += 1
                if (follow_up := on_reply(reply)) is not None:
                    self.push([follow_up])
        log.info("replies_received", sent=self.sent, received=received,
                 seconds=round(time.monotonic() - self.started, 2))
        return sorted(self.unsent + list(self.pending.values()))


def send_and_receive(grid: Grid, messages: list[Message], timeout: float,
                     on_reply: Callable[[Message], Message | None]) -> list[int]:
    """Both halves of an Exchange at once, for messages the server has nothing to do beside."""
    return Exchange(grid, messages, timeout).collect(on_reply)


def wait_for_nodes(grid: Grid, needed: int, timeout: float, known: Mapping[int, str] | None = None,
                   poll_seconds: float = 1.0, say_every: float = 10.0) -> list[int]:
    """The connected node ids, once at least `needed` are connected. Says every `say_every` s how many are there and
    which of the `known` nodes (id -> name, from earlier replies) are missing; raises after `timeout` s."""
    started = time.monotonic()
    said = -say_every
    while len(connected := list(grid.get_node_ids())) < needed:
        waited = time.monotonic() - started
        missing = sorted(f"{name} ({node_id})" for node_id, name in (known or {}).items() if node_id not in connected)
        if waited > timeout:
            raise TimeoutError(
                f"only {len(connected)} of min-available-nodes={needed} nodes connected after {timeout:.0f} s"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + ": start the missing SuperNodes, or lower min-available-nodes (node-wait-timeout sets the wait)")
        if waited - said >= say_every:
            log.info("waiting_for_nodes", connected=len(connected), needed=needed, missing=missing or None,
                     gives_up_in_seconds=round(timeout - waited))
            said = waited
        time.sleep(poll_seconds)
    return connected
