"""The node-local channel between a ClientApp process and its node's warm worker (app/node/worker.py).

A Unix stream socket in a directory only the node's user can enter (0700), the socket itself 0600: nothing but
the node's own processes can reach the policy or the data, and nothing listens on a TCP port. Frames are a 4-byte
length, a JSON header and an optional binary payload (a serialized Flower RecordDict).

The ClientApp side (`call`) imports neither torch nor LeRobot. It tells a worker that is gone (socket missing,
connection refused or closed mid-answer) from one that is stuck (no heartbeat frame for `silence_seconds`, or no
progress for `stall_seconds`); a stuck worker is killed so the node's supervisor starts a fresh one. Either way the
request is tried once more on the new worker before the message fails with an error that names the worker's log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from app.common.errors import UserError
from app.common.telemetry import get_logger

log = get_logger(__name__)

_LENGTH = struct.Struct("!I")
HEARTBEAT_SECONDS = 2.0  # a busy worker says it is alive this often


class WorkerUnavailable(RuntimeError):
    """The worker is not there (not started yet, crashed) or went away mid-request."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid  # the worker that went away, when it had said who it was


class WorkerStuck(RuntimeError):
    """The worker is there but stopped answering or stopped making progress."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


class WorkerFailed(RuntimeError):
    """The worker ran the request and it failed there (a bug or an environment problem, not the user's input)."""


@dataclass(frozen=True)
class Limits:
    connect_seconds: float = 180.0  # a freshly (re)started worker imports torch and LeRobot first
    silence_seconds: float = 60.0  # no frame at all: frozen, stopped or deadlocked
    stall_seconds: float = 1800.0  # frames but no progress (a model download counts as no progress)


# ------------------------------------------------------------------------------------------------ framing


def send_frame(sock: socket.socket, header: dict, payload: bytes = b"") -> None:
    encoded = json.dumps({**header, "payload": len(payload)}).encode()
    sock.sendall(_LENGTH.pack(len(encoded)) + encoded)
    if payload:
        sock.sendall(payload)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise WorkerUnavailable("the worker closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> tuple[dict, bytes]:
    (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
    header = json.loads(_recv_exactly(sock, length))
    payload = _recv_exactly(sock, header["payload"]) if header.get("payload") else b""
    return header, payload


# ------------------------------------------------------------------------------------------------ worker side


def private_socket_dir(directory: Path) -> Path:
    """Create (or check) the directory that holds the socket: ours, and closed to everyone else."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise UserError(f"{directory} belongs to another user; give the node a socket directory of its own")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(directory, 0o700)
    return directory


def listen(path: Path) -> socket.socket:
    private_socket_dir(path.parent)
    path.unlink(missing_ok=True)  # left by a worker that crashed
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window in which others could connect
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    server.listen(8)
    return server


# ------------------------------------------------------------------------------------------------ ClientApp side


def _connect(path: str, limits: Limits) -> socket.socket:
    deadline = time.monotonic() + limits.connect_seconds
    waited = False
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            if waited:
                log.info("worker_reached", socket=path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise WorkerUnavailable(f"no worker answers on {path} after {limits.connect_seconds:.0f} s "
                                        f"({type(exc).__name__})") from exc
            if not waited:
                log.info("waiting_for_worker", socket=path)
                waited = True
            time.sleep(0.5)


def _exchange(path: str, header: dict, payload: bytes, limits: Limits) -> bytes:
    sock = _connect(path, limits)
    with sock:
        progress, progress_at, pid = None, time.monotonic(), None
        try:
            send_frame(sock, header, payload)
        except OSError as exc:
            raise WorkerUnavailable(f"the worker went away before it took the request ({exc})") from exc
        sock.settimeout(limits.silence_seconds)
        while True:
            try:
                reply, body = recv_frame(sock)
            except TimeoutError as exc:
                raise WorkerStuck(f"the worker (pid {pid}) sent nothing for {limits.silence_seconds:.0f} s", pid) from exc
            except WorkerUnavailable as exc:  # closed mid-answer: name the worker it was
                exc.pid = pid
                raise
            except OSError as exc:  # reset mid-answer: the worker died
                raise WorkerUnavailable(f"the worker's connection broke ({exc})", pid) from exc
            pid = reply.get("pid", pid)
            if reply["type"] == "reply":
                return body
            if reply["type"] == "error":
                raise _remote_error(reply)
            if reply.get("progress") != progress:
                progress, progress_at = reply.get("progress"), time.monotonic()
            elif time.monotonic() - progress_at > limits.stall_seconds:
                raise WorkerStuck(f"the worker (pid {pid}) made no progress for {limits.stall_seconds:.0f} s", pid)


def _remote_error(reply: dict) -> Exception:
    """The worker's exception, as the same kind of error here: a UserError keeps its class and its one line."""
    from app.common import errors
    kind = getattr(errors, reply.get("kind", ""), None)
    if isinstance(kind, type) and issubclass(kind, UserError):
        return kind(reply["message"])
    return WorkerFailed(f"{reply.get('kind')}: {reply['message']}")


def _wait_gone(pid: int | None, seconds: float) -> None:
    """Wait until a lost worker's process is gone: a retry sent sooner reaches the dying worker's socket."""
    deadline = time.monotonic() + seconds
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):  # gone, or not ours: then it cannot be the node's worker
            return
        time.sleep(0.2)


def _kill(pid: int | None) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)  # the node's supervisor notices and starts a fresh worker
        except ProcessLookupError:
            pass


def call(path: str, header: dict, payload: bytes, limits: Limits = Limits(), log_hint: str = "") -> bytes:
    """Send one request to the node's worker and return its answer's payload; one retry on a new worker."""
    for attempt in (1, 2):
        try:
            return _exchange(path, header, payload, limits)
        except WorkerStuck as exc:
            log.error("worker_stuck", socket=path, why=str(exc), attempt=attempt, action="killed, restarting")
            _kill(exc.pid)
            _wait_gone(exc.pid, limits.connect_seconds)
            failure: Exception = exc
        except WorkerUnavailable as exc:
            log.error("worker_lost", socket=path, why=str(exc), attempt=attempt, action="waiting for its restart")
            _wait_gone(exc.pid, limits.connect_seconds)
            failure = exc
    raise WorkerFailed(f"the node's worker failed twice on this message ({failure}); see its log {log_hint}")
