"""Runs a command and reports every process it left behind: `python -m tests.reaper REPORT -- COMMAND...`.

This process makes itself the child subreaper of the command's process tree (Linux `PR_SET_CHILD_SUBREAPER`), so a
process that the command started and did not stop is re-parented here when the command exits, however deep it was
and whatever its command line says. After the command exits (and a grace period for processes already stopping),
the command lines of the survivors are written to REPORT as JSON, the survivors are killed, and this process exits
with the command's exit code. Its output is the command's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 10.0


def survivors() -> list[psutil.Process]:
    alive = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def reap_zombies() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass
    except ChildProcessError:
        pass


def main(argv: list[str]) -> int:
    report, separator, *command = argv
    if separator != "--" or not command:
        sys.exit("usage: python -m tests.reaper REPORT -- COMMAND...")
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"tests.reaper: prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    code = subprocess.run(command).returncode
    deadline = time.monotonic() + GRACE_SECONDS
    while (left := survivors()) and time.monotonic() < deadline:
        reap_zombies()
        time.sleep(0.2)
    lines = []
    for process in left:
        try:
            lines.append(" ".join(process.cmdline()) or process.name())
            process.kill()
        except psutil.NoSuchProcess:
            pass
    with open(report, "w") as f:
        json.dump(lines, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
