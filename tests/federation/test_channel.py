"""app.federation.channel: the node-local socket between a ClientApp and its warm worker, against small worker stand-ins that
misbehave on purpose (the real worker is exercised in tests/test_worker.py and the integration tests)."""

import stat
import subprocess
import threading
import time

import pytest

from app.federation import channel
from app.common.errors import DatasetError

FAST = channel.Limits(connect_seconds=2, silence_seconds=1, stall_seconds=60)


def serve(path, *behaviours):
    """A stand-in worker: the n-th connection is handled by the n-th behaviour (the last one repeats)."""
    server = channel.listen(path)

    def loop():
        for n in range(10):
            connection, _ = server.accept()
            with connection:
                header, payload = channel.recv_frame(connection)
                behaviours[min(n, len(behaviours) - 1)](connection, header, payload)

    threading.Thread(target=loop, daemon=True).start()
    return server


def echo(connection, header, payload):
    channel.send_frame(connection, {"type": "alive", "progress": 0})
    channel.send_frame(connection, {"type": "reply"}, header["op"].encode() + payload)


def test_socket_and_its_directory_are_the_owners_alone(tmp_path):
    path = tmp_path / "node" / "worker.sock"
    serve(path, echo)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(path.stat().st_mode)


def test_a_request_and_its_answer_travel_whole(tmp_path):
    path = tmp_path / "worker.sock"
    serve(path, echo)
    payload = bytes(range(256)) * 40_000  # 10 MB: more than one recv
    assert channel.call(str(path), {"op": "train"}, payload, FAST) == b"train" + payload


def test_the_workers_user_error_arrives_as_the_same_one_line_error(tmp_path):
    path = tmp_path / "worker.sock"
    serve(path, lambda c, h, p: channel.send_frame(c, {"type": "error", "kind": "DatasetError", "message": "no camera"}))
    with pytest.raises(DatasetError, match="^no camera$"):
        channel.call(str(path), {"op": "train"}, b"", FAST)


def test_a_silent_worker_is_killed_and_the_message_retried_on_the_next_one(tmp_path):
    path = tmp_path / "worker.sock"
    stuck_worker = subprocess.Popen(["sleep", "60"])

    def hang(connection, header, payload):
        channel.send_frame(connection, {"type": "alive", "pid": stuck_worker.pid, "progress": 0})
        stuck_worker.wait()  # says nothing more until it is killed

    serve(path, hang, echo)
    assert channel.call(str(path), {"op": "evaluate"}, b"!", FAST) == b"evaluate!"
    assert stuck_worker.wait(timeout=5) == -9


def test_the_retry_after_a_lost_worker_waits_for_its_replacement_not_the_dying_one(tmp_path):
    path = tmp_path / "worker.sock"
    dying_worker = subprocess.Popen(["sleep", "60"])
    old = channel.listen(path)

    def die_slowly_then_restart():
        connection, _ = old.accept()
        channel.recv_frame(connection)
        channel.send_frame(connection, {"type": "alive", "pid": dying_worker.pid, "progress": 0})
        connection.close()  # lost mid-request, but the process lingers and its socket still accepts
        old.settimeout(1.0)
        try:
            while True:
                early, _ = old.accept()
                early.close()  # a retry that reached the dying worker
        except TimeoutError:
            pass
        old.close()
        dying_worker.kill()
        dying_worker.wait()
        time.sleep(0.5)  # the supervisor's restart: a new socket at the same path
        serve(path, echo)

    threading.Thread(target=die_slowly_then_restart, daemon=True).start()
    assert channel.call(str(path), {"op": "train"}, b"!", FAST) == b"train!"


def test_a_worker_that_keeps_dying_fails_the_message_and_names_its_log(tmp_path):
    path = tmp_path / "worker.sock"
    serve(path, lambda c, h, p: None)  # closes every connection without an answer
    with pytest.raises(channel.WorkerFailed, match="failed twice .* see its log /logs/worker.log"):
        channel.call(str(path), {"op": "train"}, b"", FAST, log_hint="/logs/worker.log")


def test_no_worker_at_all_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(channel.WorkerFailed, match="no worker answers on .*worker.sock after 2 s"):
        channel.call(str(tmp_path / "worker.sock"), {"op": "train"}, b"", FAST)
