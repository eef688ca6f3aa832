"""The warm node: the long-lived process that does a SuperNode's work on each message (app.federation.client_work).

Flower starts a fresh ClientApp process for every message in a deployment. Importing torch and LeRobot and
building the policy, the dataset and the processors there would be paid on every message (22 to 28 s per message
on the demo's 2-core machine, more with smolvla_base on a GPU). So `fedvla node` starts this worker beside
flower-supernode, once: it imports torch and LeRobot at start, builds one `Learner` (policy, opened dataset,
processors, and on a GPU the weights on the device) for the first message of a run and keeps it until the run's
final message, and serves the node's ClientApps over a private Unix socket (app/federation/channel.py). The ClientApp stays
an ordinary Flower ClientApp: with no worker configured (the simulation engine, whose workers are warm already, or
a bare `flower-supernode`) it calls the same `perform` in its own process.

    python -m app.node.worker --socket <0700 dir>/worker.sock --name alice --dataset-uri /data/alice --model \
        lerobot/smolvla_base --fps 30 --cameras auto --camera-map auto      (what `fedvla node` starts)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from app.common import metrics as node_metrics
from app.common.config import NodeConfig, RunConfig
from app.common.errors import DatasetError, UserError
from app.common.files import write_json_atomic
from app.common.telemetry import configure_logging, get_logger, output_to
from app.federation import channel
from app.federation.client_work import REQUEST_KEYS, Learners, node_log_dir, perform
from app.node.supervisor import Companion

log = get_logger(__name__)
CHECK_FAILED = "dataset-check-failed.json"  # beside the socket: why the worker refused the node's dataset


class Worker:
    """Serves a node's ClientApps on a Unix socket, one message at a time (one policy, one device), keeping the
    run's Learner between messages. Each connection gets heartbeat frames while its message waits or runs."""

    def __init__(self, socket_path: Path, name: str, idle_release_seconds: float, checked: dict | None = None):
        self.socket_path, self.name = socket_path, name
        self.idle_release_seconds = idle_release_seconds
        self.checked = checked or {}  # the run-config settings the node's dataset was checked for at start
        self.runs_seen: set[int] = set()
        self.learners = Learners(capacity=1)  # one policy per run in memory
        self.busy = threading.Lock()
        self.progress = 0  # bumped by every training step: the ClientApp's stall detector watches it
        self.last_active = time.monotonic()

    def serve_forever(self) -> None:
        server = channel.listen(self.socket_path)
        threading.Thread(target=self._release_when_idle, daemon=True, name="idle-release").start()
        log.info("worker_listening", socket=str(self.socket_path), pid=os.getpid())
        while True:
            connection, _ = server.accept()
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        sending = threading.Lock()
        done = threading.Event()

        def send(header: dict, payload: bytes = b"") -> None:
            with sending:
                channel.send_frame(connection, {**header, "pid": os.getpid(), "progress": self.progress}, payload)

        def heartbeat() -> None:
            while not done.wait(channel.HEARTBEAT_SECONDS):
                try:
                    send({"type": "alive"})
                except OSError:
                    return  # the ClientApp went away; the work still finishes

        with connection:
            try:
                header, payload = channel.recv_frame(connection)
                send({"type": "alive"})
                threading.Thread(target=heartbeat, daemon=True).start()
                with self.busy:
                    answer = ({"type": "reply"}, self._handle(header, payload))
            except Exception as exc:
                if isinstance(exc, UserError):  # the operator's or the run's to fix: one line, no traceback
                    log.error("message_refused", error=str(exc))
                else:
                    log.exception("message_failed")
                answer = ({"type": "error", "kind": type(exc).__name__, "message": str(exc)}, b"")
            finally:
                done.set()
            try:
                send(*answer)
            except OSError as exc:
                log.warning("reply_undelivered", why=str(exc))

    def _handle(self, header: dict, payload: bytes) -> bytes:
        from flwr.common.serde import ProtoRecordDict, recorddict_from_proto, recorddict_to_proto

        op, run_id, run_config, node_config = (header[k] for k in REQUEST_KEYS)
        self.last_active = time.monotonic()
        if run_id not in self.runs_seen:
            self.runs_seen.add(run_id)
            self._compare_settings(run_id, RunConfig.from_mapping(run_config))
        started = time.perf_counter()
        content = recorddict_from_proto(ProtoRecordDict.FromString(payload))
        built = self.learners.built
        reply = perform(op, run_id, run_config, node_config, content, self.learners, on_step=self._step)
        node_metrics.record_worker_message(self.name, op, built != self.learners.built)
        log.info("message_served", op=op, run_id=run_id, seconds=round(time.perf_counter() - started, 2),
                 policy_built=built != self.learners.built, policies_built=self.learners.built)
        if content["config"].get("final", False):  # the run's last message to this node
            self.learners.release(run_id)
        self.last_active = time.monotonic()
        return recorddict_to_proto(reply).SerializeToString()

    def _compare_settings(self, run_id: int, run: RunConfig) -> None:
        """A run whose model, fps or cameras differ from those the dataset was checked for at start: say so. The
        run's Learner checks the dataset again, with the same check, for the run's own settings."""
        differ = {key: {"checked": self.checked[key], "run": value}
                  for key, value in (("model", run.model), ("fps", run.fps), ("cameras", run.cameras))
                  if key in self.checked and str(self.checked[key]) != str(value)}
        if differ:
            log.warning("run_settings_differ", run_id=run_id, settings=differ,
                        fix="start `fedvla node` with the federation's --model/--fps/--cameras; the dataset is "
                            "checked again for this run's settings")

    def _step(self, _step: int, _loss: float) -> None:
        self.progress += 1

    def _release_when_idle(self) -> None:
        """A run that stopped early (or whose server died) sends no final message: free its policy anyway."""
        while True:
            time.sleep(min(60.0, self.idle_release_seconds / 4))
            idle = time.monotonic() - self.last_active
            if self.learners.held and idle > self.idle_release_seconds and self.busy.acquire(blocking=False):
                try:
                    log.info("idle_release", idle_seconds=round(idle))
                    self.learners.release()
                finally:
                    self.busy.release()


def warm_imports() -> float:
    """Import what every message needs now, so no message pays for it."""
    started = time.perf_counter()
    import torch  # noqa: F401
    from lerobot.policies.smolvla import modeling_smolvla  # noqa: F401

    from app.learning import data, evaluate, learner, model, train  # noqa: F401
    return time.perf_counter() - started


def start(command: list[str], env: dict[str, str], socket_path: Path) -> Companion:
    """Start the worker and wait until it listens. It checks the node's dataset first: if that fails, raise the
    check's own error (the node must not join), which the worker left beside its socket."""
    worker = Companion(command, env, "worker")
    worker.tend()
    while not socket_path.exists():
        code = worker.process.poll()
        if code is not None:
            failed = socket_path.with_name(CHECK_FAILED)
            if failed.exists():
                raise DatasetError(json.loads(failed.read_text())["error"])
            raise RuntimeError(f"the node's worker exited with code {code} before it was ready; see its log above")
        time.sleep(0.2)
    return worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.node.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to serve (its directory: 0700)")
    parser.add_argument("--name", required=True, help="the node's name, as its ClientApps label it")
    parser.add_argument("--dataset-uri", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--fps", type=int, required=True)
    parser.add_argument("--cameras", required=True)
    parser.add_argument("--camera-map", required=True)
    parser.add_argument("--idle-release-seconds", type=float, default=900.0,
                        help="free the policy after this long without a message (default 900)")
    args = parser.parse_args(argv)
    logs = node_log_dir(NodeConfig(name=args.name, dataset_uri="-"))
    configure_logging(log_file=logs / "worker.log")
    # LeRobot and transformers print as they build a policy: to the log, while this worker's own lines show
    with output_to(logs / "worker-output.log"):
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    seconds = warm_imports()
    from app.learning.learner import check_node_dataset

    try:
        size = check_node_dataset(args.dataset_uri, args.model, args.fps, args.cameras, args.camera_map)
    except UserError as exc:  # `fedvla node` shows it as its own error and the node does not join
        write_json_atomic(args.socket.with_name(CHECK_FAILED), {"error": str(exc)})
        log.error("dataset_check_failed", error=str(exc))
        return 2
    node_metrics.record_worker_start(args.name, size.episodes, size.frames)
    log.info("worker_started", pid=os.getpid(), name=args.name, import_seconds=round(seconds, 2))
    checked = {"model": args.model, "fps": args.fps, "cameras": args.cameras}
    Worker(args.socket, args.name, args.idle_release_seconds, checked).serve_forever()
    return 0


if __name__ == "__main__":
    from app.node.worker import main as worker_main  # the module's own name in logs, not __main__

    sys.exit(worker_main())
