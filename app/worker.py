"""The warm node: what a SuperNode does with each message, and the long-lived process that does it.

Flower starts a fresh ClientApp process for every message in a deployment. Importing torch and LeRobot and
building the policy, the dataset and the processors there would be paid on every message (22 to 28 s per message
on the demo's 2-core machine, more with smolvla_base on a GPU). So `fedvla node` starts this worker beside
flower-supernode, once: it imports torch and LeRobot at start, builds one `Learner` (policy, opened dataset,
processors, and on a GPU the weights on the device) for the first message of a run and keeps it until the run's
final message, and serves the node's ClientApps over a private Unix socket (app/channel.py). The ClientApp stays
an ordinary Flower ClientApp: with no worker configured (the simulation engine, whose workers are warm already, or
a bare `flower-supernode`) it calls `perform` in its own process.

    python -m app.worker --socket <0700 dir>/worker.sock --name alice --dataset-uri /data/alice --model \
        lerobot/smolvla_base --fps 30 --cameras auto --camera-map auto      (what `fedvla node` starts)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from app import channel
from app import metrics as node_metrics
from app.checkpoint import write_json_atomic
from app.config import NodeConfig, RunConfig, fedvla_home
from app.errors import DatasetError, ModelError, UserError
from app.supervisor import Companion
from app.telemetry import configure_logging, get_logger, output_to

log = get_logger(__name__)
TRAIN, EVALUATE, QUERY = "train", "evaluate", "query"
# A ClientApp's request: which message kind, for which run, with the run's and the node's settings.
REQUEST_KEYS = ("op", "run-id", "run-config", "node-config")
CHECK_FAILED = "dataset-check-failed.json"  # beside the socket: why the worker refused the node's dataset


def node_log_dir(node: NodeConfig) -> Path:
    """Nodes keep their own logs on their own machine, one directory per node."""
    return fedvla_home() / "logs" / f"client_{node.label()}"


class Learners:
    """The Learners a process holds, keyed by everything that shapes one: the run, its settings, the node's data.
    A new run never gets an earlier run's policy, and at most `capacity` policies stay in memory."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.held: OrderedDict[tuple, object] = OrderedDict()
        self.states: dict[tuple, RecordDict] = {}  # what a node keeps between a run's messages (app.wire)
        self.built = 0

    def get(self, run_id: int, run: RunConfig, node: NodeConfig):
        """The Learner for this run and node, and the RecordDict the node keeps between the run's messages."""
        from app.node import Learner, node_dataset_uri

        uri, partition = node_dataset_uri(run, node)
        key = (run_id, run, uri, partition, node.camera_map)
        if key in self.held:
            self.held.move_to_end(key)
            return self.held[key], self.states[key]
        while len(self.held) >= self.capacity:
            self._drop(next(iter(self.held)))
        started = time.perf_counter()
        learner = Learner(run, uri, partition, node.camera_map)
        self.held[key], self.states[key] = learner, RecordDict()
        self.built += 1
        log.info("learner_ready", run_id=run_id, dataset=uri, partition=partition,
                 seconds=round(time.perf_counter() - started, 2))
        return learner, self.states[key]

    def release(self, run_id: int | None = None) -> None:
        """Free the policies of `run_id` (all when None): memory goes back when a run ends."""
        for key in [k for k in self.held if run_id is None or k[0] == run_id]:
            self._drop(key)

    def _drop(self, key: tuple) -> None:
        del self.held[key], self.states[key]
        gc.collect()
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        log.info("learner_released", run_id=key[0], dataset=key[2])


IN_PROCESS = Learners(capacity=2)  # a simulation worker serves several virtual nodes in turn


def perform(op: str, run_id: int, run_config: dict, node_config: dict, content: RecordDict,
            learners: Learners = IN_PROCESS, on_step: Callable[[int, float], None] | None = None,
            state: RecordDict | None = None) -> RecordDict:
    """One message's work on this node's data: train, evaluate or report stats. Returns the reply's content.
    `state` is what the node keeps between the run's messages: the ClientApp's context.state in a simulation (whose
    messages may reach any of its workers), else the one the learners keep beside the run's Learner."""
    import torch

    from app.wire import NodeCodec, update_bytes
    from app.node import RECEIVED_EVAL_LOSS

    node = NodeConfig.from_mapping(node_config)
    run = RunConfig.from_mapping(run_config)
    learner, kept = learners.get(run_id, run, node)
    codec = NodeCodec(kept if state is None else state)
    config = content["config"]
    expected = config.get("base-fingerprint")
    if expected is not None and expected != learner.fingerprint:
        raise ModelError(
            f"node {node.label()!r}: its frozen base model (fingerprint {learner.fingerprint}) differs from the "
            f"server's ({expected}) for model {run.model!r}; install the same base model version on this node"
        )
    name = node.label()
    reply = RecordDict({"node": _node_record(name, learner)})
    if op == QUERY:
        log.info("stats_requested", node=name)
        reply["norm-stats"] = ConfigRecord(learner.local_stats())
        reply["metrics"] = MetricRecord({"num-examples": len(learner.data.train)})
        return reply

    received = content["arrays"]
    global_weights = codec.receive(content)
    weights = {name: torch.from_numpy(values) for name, values in global_weights.items()}
    stats = dict(content["norm-stats"])
    server_round = int(config["server-round"])
    if op == EVALUATE:
        metrics = learner.evaluate(weights, stats)
        log.info("round_evaluated", node=name, round=server_round, **metrics)
        node_metrics.record_node_eval(run_id, name, metrics["eval-loss"], update_bytes(received))
        reply["metrics"] = MetricRecord(metrics)
        return reply

    log.info("round_training", node=name, round=server_round)  # a fault from here on hits work in progress
    result = learner.train_round(weights, stats, float(config["lr"]), server_round,
                                 evaluate_first=bool(config.get("evaluate-received", False)), on_step=on_step)
    if RECEIVED_EVAL_LOSS in result.metrics:
        node_metrics.record_node_eval(run_id, name, result.metrics[RECEIVED_EVAL_LOSS], 0)
    arrays = codec.send(run.update_encoding, {k: v.numpy() for k, v in result.arrays.items()}, global_weights,
                        run.wire_layout)
    metrics = {**result.metrics, "bytes-received": update_bytes(received), "bytes-sent": update_bytes(arrays)}
    log.info("round_trained", node=name, round=server_round, **metrics)
    node_metrics.record_node_train(run_id, name, server_round, metrics)
    reply["arrays"] = arrays
    reply["metrics"] = MetricRecord(metrics)
    return reply


def _node_record(name: str, learner) -> ConfigRecord:
    from app.data import public_name

    return ConfigRecord({"node-name": name, "dataset": public_name(learner.data.ref.uri)})


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

    from app import data, evaluate, model, node, train  # noqa: F401
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
    parser = argparse.ArgumentParser(prog="python -m app.worker", description=__doc__.split("\n\n")[0])
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
    from app.node import check_node_dataset

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
    from app.worker import main as worker_main  # the module's own name in logs, not __main__

    sys.exit(worker_main())
