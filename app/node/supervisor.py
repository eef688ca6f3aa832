"""Keeps a container's (or an operator's) processes running: the main process, whose exit ends everything and
whose exit code is returned, and optionally a companion that is restarted whenever it dies (the node's warm
worker beside flower-supernode). SIGTERM and SIGINT go to both, so `docker stop` and Ctrl-C stop cleanly. Given a
log file, the main process's whole output goes there and the console gets only the lines worth an operator's eyes.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from app.common.telemetry import get_logger

log = get_logger(__name__)
POLL_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0  # a companion that ran this long before dying restarts at once again


class Companion:
    """A process restarted with exponential backoff each time it exits, until `stop`."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], name: str):
        self.command, self.env, self.name = list(command), dict(env), name
        self.process: subprocess.Popen | None = None
        self.backoff = 1.0
        self.restart_at = 0.0
        self.started_at = 0.0
        self.starts = 0
        self.stopping = False  # set once asked to stop: a companion that exits then stays down

    def tend(self) -> None:
        """Start it if it is due, note it if it died. Called every POLL_SECONDS."""
        now = time.monotonic()
        if self.process is None:
            if now >= self.restart_at and not self.stopping:
                self.process = subprocess.Popen(self.command, env=self.env)
                self.started_at, self.starts = now, self.starts + 1
                log.info("companion_started", name=self.name, pid=self.process.pid, starts=self.starts)
            return
        code = self.process.poll()
        if code is None:
            return
        if self.stopping:  # it was asked to: nothing went wrong
            log.info("companion_stopped", name=self.name, code=code)
            self.process = None
            return
        lived = now - self.started_at
        if lived > HEALTHY_AFTER_SECONDS:
            self.backoff = 1.0
        self.restart_at = now + self.backoff
        log.error("companion_exited", name=self.name, pid=self.process.pid, code=code,
                  lived_seconds=round(lived, 1), restart_in_seconds=self.backoff)
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)
        self.process = None

    def signal(self, signum: int) -> None:
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# What a console needs from a child: our processes' log lines (each already shows only what matters at its level)
# and Flower's warnings and errors. Flower's and uvicorn's INFO lines, prints and C libraries' chatter are left to
# the log file.
WORTH_SHOWING = re.compile(r"\S+ \[(debug|info|warning|error|critical) *\] |(WARNING|ERROR|CRITICAL) *:")


def _pass_through(stream, watch: Callable[[str], None] | None, log_file: Path | None) -> None:
    """Copy the child's output: all of it to `log_file` and the lines worth showing to ours, unchanged (without a
    log file, all of it to ours); hand each line, without colour codes, to `watch`."""
    with open(log_file, "ab") if log_file else contextlib.nullcontext() as sink:
        for raw in iter(stream.readline, b""):
            line = ANSI_ESCAPE.sub("", raw.decode(errors="replace")).rstrip()
            if sink is not None:
                sink.write(raw)
                sink.flush()
            if sink is None or WORTH_SHOWING.match(line):
                sys.stdout.buffer.write(raw)
                sys.stdout.buffer.flush()
            if watch is not None:
                watch(line)


def run(command: Sequence[str], env: Mapping[str, str], role: str = "", helper: Companion | None = None,
        watch: Callable[[str], None] | None = None, log_file: Path | None = None) -> int:
    """Run `command` to its end (with `helper`, already started, kept alive beside it); returns its exit code,
    128 + N when killed by signal N, as a shell reports it. `watch` sees every line the command writes; with
    `log_file`, every line goes there (appended) and only those `WORTH_SHOWING` to the console."""
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if watch or log_file else {}
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(list(command), env=dict(env), **piped)
    reader = (threading.Thread(target=_pass_through, args=(child.stdout, watch, log_file), daemon=True)
              if piped else None)
    if reader is not None:
        reader.start()

    def forward(signum, _frame):
        child.send_signal(signum)
        if helper is not None:
            helper.signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        while (code := child.poll()) is None:
            if helper is not None:
                helper.tend()
            time.sleep(POLL_SECONDS)
    finally:
        if helper is not None:
            helper.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if reader is not None:
            reader.join(timeout=5)  # its last lines (often the reason it exited) come before ours
    log.info("supervised_process_exited", role=role, command=command[0], code=code)
    return code if code >= 0 else 128 - code
