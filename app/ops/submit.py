"""Submit the app to a federation with `flwr run`, follow the run to its end, and exit with its real outcome: 0 only
when Flower reports it finished:completed. What compose's `submit` service runs (deploy/submit.sh).

The SuperLink may restart while the run goes on (its state survives in its database, and the nodes and the
ServerApp reconnect): while its Control API cannot be reached, this keeps asking, for up to `--reconnect-seconds`
of unavailability in a row, instead of reporting a run that is still going as failed. Every problem is one line.

    python -m app.ops.submit /opt/fedvla fedvla-compose --run-config "num-server-rounds=3"
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from app.common.telemetry import configure_logging, get_logger
from app.ops.status import ask_flwr, flwr_command

log = get_logger("submit")
COMPLETED = "finished:completed"


class SubmitError(Exception):
    """The run could not be submitted or followed: the one line to end with."""


def submit(app_dir: str, connection: str, run_config: str, ask: Callable[..., dict] | None = None) -> int:
    answer = (ask or ask_flwr)("run", app_dir, *([connection] if connection else []), "--run-config", run_config)
    if not answer.get("success") or "run-id" not in answer:
        why = " ".join(str(answer.get("error-message") or answer).split())  # Flower's message, on one line
        raise SubmitError(f"`flwr run` did not submit the run: {why}")
    return int(answer["run-id"])


def run_status(run_id: int, connection: str, ask: Callable[..., dict] | None = None) -> str | None:
    """The run's status as Flower reports it, or None while the Control API cannot answer."""
    answer = (ask or ask_flwr)("ls", *([connection] if connection else []), "--run-id", str(run_id))
    runs = answer.get("runs") if answer.get("success") else None
    if not runs:
        return None
    return str(runs[0].get("status", ""))


def follow(run_id: int, connection: str, reconnect_seconds: float, poll_seconds: float = 5.0,
           ask: Callable[..., dict] | None = None, stream: Callable[[int, str], None] | None = None) -> str:
    """The run's final status. Streams its log while the SuperLink serves it; when the stream ends before the run
    does (the SuperLink went away), waits for the SuperLink and streams again."""
    unavailable_since: float | None = None
    while True:
        if stream is not None:
            stream(run_id, connection)
        status = run_status(run_id, connection, ask)
        if status is not None and status.startswith("finished"):
            return status
        if status is None:
            now = time.monotonic()
            if unavailable_since is None:
                unavailable_since = now
                log.warning("superlink_unavailable", run_id=run_id,
                            then=f"asking again every {poll_seconds:g} s for up to {reconnect_seconds:g} s")
            elif now - unavailable_since > reconnect_seconds:
                raise SubmitError(f"the SuperLink's Control API gave no answer for {reconnect_seconds:g} s while run "
                                  f"{run_id} was going on: its outcome is unknown; `flwr ls --run-id {run_id}` once "
                                  "the SuperLink is back")
        elif unavailable_since is not None:
            log.info("superlink_back", run_id=run_id, status=status)
            unavailable_since = None
        time.sleep(poll_seconds)


def stream_log(run_id: int, connection: str) -> None:
    """Flower's own `flwr log --stream`: it ends when the run ends, or when the SuperLink goes away."""
    subprocess.run([flwr_command(), "log", str(run_id), *([connection] if connection else []), "--stream"], check=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.ops.submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("app_dir")
    parser.add_argument("connection", nargs="?", default="", help="a connection of $FLWR_HOME/config.toml")
    parser.add_argument("--run-config", default="", help="'key=value ...' with TOML values")
    parser.add_argument("--reconnect-seconds", type=float, default=600.0,
                        help="how long the SuperLink may be unreachable in a row while the run goes on (default 600)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        run_id = submit(args.app_dir, args.connection, args.run_config)
        log.info("run_submitted", run_id=run_id)
        status = follow(run_id, args.connection, args.reconnect_seconds, stream=stream_log)
    except SubmitError as exc:
        sys.stderr.write(f"submit: error: {exc}\n")
        return 1
    sys.stderr.write(f"submit: run {run_id} {status}\n")  # the service's answer, as its last line
    return 0 if status == COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
