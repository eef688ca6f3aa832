"""A node's work on one message: train, evaluate or report stats on this node's data, the reply's content out.

The ClientApp hands each message here: in its own process (the simulation engine, a bare flower-supernode), or
through app.federation.channel to the node's warm worker (app.node.worker), which calls the same `perform`. The
learners a process holds (`Learners`) keep the run's policy, dataset and processors between its messages.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from app.common import metrics as node_metrics
from app.common.config import NodeConfig, RunConfig, fedvla_home
from app.common.errors import ModelError
from app.common.telemetry import get_logger

log = get_logger(__name__)
TRAIN, EVALUATE, QUERY = "train", "evaluate", "query"
# A ClientApp's request: which message kind, for which run, with the run's and the node's settings.
REQUEST_KEYS = ("op", "run-id", "run-config", "node-config")


def node_log_dir(node: NodeConfig) -> Path:
    """Nodes keep their own logs on their own machine, one directory per node."""
    return fedvla_home() / "logs" / f"client_{node.label()}"


class Learners:
    """The Learners a process holds, keyed by everything that shapes one: the run, its settings, the node's data.
    A new run never gets an earlier run's policy, and at most `capacity` policies stay in memory."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.held: OrderedDict[tuple, object] = OrderedDict()
        self.states: dict[tuple, RecordDict] = {}  # what a node keeps between a run's messages (app.federation.wire)
        self.built = 0

    def get(self, run_id: int, run: RunConfig, node: NodeConfig):
        """The Learner for this run and node, and the RecordDict the node keeps between the run's messages."""
        from app.learning.learner import Learner, node_dataset_uri

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

    from app.federation.wire import NodeCodec, update_bytes
    from app.learning.learner import RECEIVED_EVAL_LOSS

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
    from app.learning.data import public_name

    return ConfigRecord({"node-name": name, "dataset": public_name(learner.data.ref.uri)})
