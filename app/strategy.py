"""FedProx for SmolVLA: Flower's FedProx, plus what a production federation of robot operators needs.

- every message carries the federation's normalization stats, the round's learning rate and the fingerprint of
  the frozen base model (a node with a different base refuses to train instead of poisoning the average);
- one message per node per round: a node evaluates the global model it receives before it trains on it, when the
  previous round was an evaluation round (every `eval-frequency` rounds), and reports that loss in its train
  reply; only the final global model needs evaluate messages of its own;
- the weights travel in the run's `update-encoding` both ways (app.codec, in app.wire's records): full fp32, or
  deltas against the global weights the nodes already hold, which this strategy's `Broadcast` keeps track of;
- replies are checked before they are aggregated: a failed node, a reply larger than `max-update-mb`, arrays
  with unexpected names, shapes or dtypes or non-finite values, or no sample count is dropped and logged;
- aggregation streams: each reply is folded into a running sample-weighted sum as it arrives and then let go, so
  the server's memory does not grow with the number of nodes;
- each node's reply metrics are kept per round for the run report;
- a round closes with the usable replies it has (a node lost mid-round is left out) if at least `min-replies`;
- waiting for `min-available-nodes` says which known nodes are missing and gives up after `node-wait-timeout`
  (Flower's own wait has no limit).
By default the result is FedProx's sample-weighted average of the trainable arrays (equal to Flower's batch
aggregation, up to float rounding); with `aggregation` one of Flower's robust strategies (trimmed mean, median,
Krum, MultiKrum, Bulyan) combines the screened updates instead. Those need every update at once, so their replies
are kept, decoded to fp32, until the round closes; FedVLA still samples, configures (proximal-mu included) and
screens. With `server-optimizer` (Flower's FedAvgM, FedAdam, FedYogi or FedAdagrad) the round's aggregate, however
it was made, is a pseudo-gradient that the server optimizer steps the global model with.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (Bulyan, FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg,
                                     FedYogi, Krum, MultiKrum)
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from app import codec, wire
from app.config import RunConfig
from app.data import public_name
from app.node import RECEIVED_EVAL_EXAMPLES, RECEIVED_EVAL_LOSS
from app.telemetry import get_logger

log = get_logger(__name__)


@dataclass
class NodeReport:
    node_id: int
    name: str
    dataset: str
    metrics: dict[str, float] = field(default_factory=dict)


def node_report(msg: Message) -> NodeReport:
    info = msg.content.config_records.get("node", ConfigRecord())
    metrics = next(iter(msg.content.metric_records.values()), MetricRecord())
    return NodeReport(
        node_id=msg.metadata.src_node_id,
        name=str(info.get("node-name", msg.metadata.src_node_id)),
        dataset=public_name(str(info.get("dataset", ""))),  # a node's own path stays out of reports and cards
        metrics={k: float(v) for k, v in metrics.items() if not isinstance(v, list)},
    )


@dataclass(frozen=True)
class ExpectedUpdate:
    """What a usable train reply carries: the global model's trainable arrays (`layout`: name -> shape, dtype) in
    the run's update `encoding`, in at most `max_bytes` (0: no cap)."""

    layout: codec.Layout
    max_bytes: int = 0
    encoding: str = codec.FP32

    @classmethod
    def like(cls, arrays: ArrayRecord, max_mb: float = 0.0, encoding: str = codec.FP32) -> ExpectedUpdate:
        layout = {name: (tuple(a.shape), str(a.dtype)) for name, a in wire.unpack(arrays).items()}
        return cls(layout, int(max_mb * 1e6), encoding)

    @property
    def wire(self) -> codec.Layout:
        return codec.wire_layout(self.encoding, self.layout)


def _layout_problem(name: str, dtype: str, shape, expected: tuple[tuple[int, ...], str]) -> str | None:
    if (tuple(shape), dtype) == expected:
        return None
    return f"array {name!r} is {dtype}{list(shape)}, the model's {expected[1]}{list(expected[0])}"


def reply_problem(msg: Message, expected: ExpectedUpdate | None) -> str | None:
    """Why a reply must not be used, or None if it is fine. Cheap checks come first: a reply's size and its arrays'
    declared names, shapes and dtypes are read before any array is decoded."""
    if msg.has_error():
        return f"node error: {msg.error.reason}"
    if len(msg.content.metric_records) != 1:  # Flower's aggregation would raise on it, ending the run
        return "reply must carry exactly one MetricRecord"
    examples = next(iter(msg.content.metric_records.values())).get("num-examples", 0)
    if isinstance(examples, list) or not 0 < examples < math.inf:
        return f"reply has no positive, finite num-examples (got {examples!r})"
    if expected is None:
        return None
    arrays = msg.content.array_records.get("arrays")
    if arrays is None or len(msg.content.array_records) != 1:
        return "reply must carry exactly one ArrayRecord, 'arrays'"
    if expected.max_bytes and (size := arrays.count_bytes()) > expected.max_bytes:
        return f"update is {size / 1e6:.3g} MB, above max-update-mb={expected.max_bytes / 1e6:g}"
    try:
        parts = wire.unpack(arrays)  # reads the index only: names, dtypes, shapes
    except ValueError as exc:
        return f"update cannot be decoded: {exc}"
    wanted = expected.wire
    if parts.keys() != wanted.keys():
        unexpected = sorted(parts.keys() - wanted.keys())[:3]
        missing = sorted(wanted.keys() - parts.keys())[:3]
        return (f"reply arrays do not match the model's trainable parameters: unexpected {unexpected}, missing "
                f"{missing} (update-encoding={expected.encoding})")
    for name, values in parts.items():
        if problem := _layout_problem(name, str(values.dtype), values.shape, wanted[name]):
            return problem
    for name, values in wire.decoded(expected.encoding, arrays, expected.layout):
        if not np.isfinite(np.sum(values, dtype=np.float64)):  # a NaN or inf anywhere makes the sum one
            return f"array {name!r} holds NaN or inf"
    return None


class WeightedMean:
    """The sample-weighted mean of updates folded in one at a time: one model's worth of memory, whatever the
    number of nodes."""

    CHUNK = 1 << 16  # values scaled at a time: the fold's scratch memory stays at 256 kB

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.weight = 0.0

    def add(self, arrays: Iterable[tuple[str, np.ndarray]], weight: float) -> None:
        w = np.float32(weight)
        for name, values in arrays:
            if name not in self.sums:
                self.sums[name] = np.zeros(values.shape, dtype=np.float32)
            total, values = self.sums[name].reshape(-1), values.reshape(-1)
            for start in range(0, values.size, self.CHUNK):
                total[start:start + self.CHUNK] += values[start:start + self.CHUNK] * w
        self.weight += weight

    def result(self) -> ArrayRecord:
        record = ArrayRecord()
        for name in list(self.sums):  # each sum is let go once it is in the record
            record[name] = Array(self.sums.pop(name) / np.float32(self.weight))
        return record


def aggregator(run: RunConfig) -> FedAvg:
    """The Flower strategy whose aggregate_train combines a round's screened updates (run-config `aggregation`)."""
    f = run.num_malicious_nodes
    build = {
        "fedprox": FedAvg,  # FedProx aggregates as FedAvg does: its proximal term acts on the nodes
        "fedtrimmedavg": lambda: FedTrimmedAvg(beta=run.trim_beta),
        "fedmedian": FedMedian,
        "krum": lambda: Krum(num_malicious_nodes=f),
        # MultiKrum averages the n - f most central updates; n is at least min-train-nodes
        "multikrum": lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=run.min_train_nodes - f),
        "bulyan": lambda: Bulyan(num_malicious_nodes=f),
    }
    return build[run.aggregation]()


class ServerOptimizer:
    """A server-side optimizer step on each round's aggregate (run-config `server-optimizer`): the aggregate minus
    the global weights is a pseudo-gradient that Flower's FedAvgM steps with momentum, and FedAdam, FedYogi and
    FedAdagrad with per-parameter adaptive steps. Flower's strategies aggregate and step in one call; here the
    aggregate is already made (streamed, or by a robust aggregation), so it is handed to them as a round's one
    reply, which their sample-weighted average leaves as it is. Their state (momentum, moments) is one to three
    models' worth of memory on the server, whatever the number of nodes, and is saved with each round's state so a
    carried-on run steps as an uninterrupted one would."""

    # per optimizer: the attributes that hold its state between rounds, each a dict or list of arrays
    STATE = {"fedavgm": ("momentum_vector",), "fedadam": ("m_t", "v_t"), "fedyogi": ("m_t", "v_t"),
             "fedadagrad": ("m_t", "v_t")}

    def __init__(self, run: RunConfig):
        self.name = run.server_optimizer
        build = {
            "fedavgm": lambda: FedAvgM(server_learning_rate=run.server_step, server_momentum=run.server_momentum),
            "fedadam": lambda: FedAdam(eta=run.server_step, beta_1=run.server_momentum),
            "fedyogi": lambda: FedYogi(eta=run.server_step, beta_1=run.server_momentum),
            "fedadagrad": lambda: FedAdagrad(eta=run.server_step),
        }
        self.flower = build[self.name]()

    def step(self, server_round: int, current: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
        """The new global arrays: `current` (the global model the round trained from) moved by the round's
        `aggregate`, in float32 like the model (the adaptive optimizers compute in float64)."""
        if isinstance(self.flower, FedAvgM):  # FedAvgM keeps an ArrayRecord, the others plain arrays
            self.flower.current_arrays = current
        else:
            self.flower.current_arrays = {name: wire.view(array) for name, array in current.items()}
        reply = Message(RecordDict({"arrays": aggregate, "metrics": MetricRecord({"num-examples": 1})}),
                        dst_node_id=0, message_type=MessageType.TRAIN)
        flower_level = FLOWER_LOGGER.level
        FLOWER_LOGGER.setLevel(logging.WARNING)  # its "Received 1 results" would misreport the round in run.log
        try:
            stepped, _ = self.flower.aggregate_train(server_round, [reply])
        finally:
            FLOWER_LOGGER.setLevel(flower_level)
        return ArrayRecord({name: Array(np.asarray(wire.view(array), dtype=np.float32))
                            for name, array in stepped.items()})

    def state(self) -> dict[str, np.ndarray]:
        """The optimizer's state as flat named arrays ("m_t/<name>", "momentum_vector/<index>"); {} before round 1."""
        flat = {}
        for attribute in self.STATE[self.name]:
            held = getattr(self.flower, attribute) or {}
            for key, values in (held.items() if isinstance(held, dict) else enumerate(held)):
                flat[f"{attribute}/{key}"] = np.asarray(values)
        return flat

    def load_state(self, flat: Mapping[str, np.ndarray]) -> None:
        for attribute in self.STATE[self.name]:
            prefix = f"{attribute}/"
            held = {key.removeprefix(prefix): np.array(v) for key, v in flat.items() if key.startswith(prefix)}
            if attribute == "momentum_vector":  # a list, in the model's array order
                setattr(self.flower, attribute, [held[str(i)] for i in range(len(held))] or None)
            else:
                setattr(self.flower, attribute, held or None)


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


class FedVLA(FedProx):
    def __init__(
        self,
        run: RunConfig,
        base_fingerprint: str,
        norm_stats: dict[str, list[float]],
        global_arrays: ArrayRecord,
        on_replies: Callable[[str, int, list[NodeReport]], None] | None = None,
    ):
        super().__init__(
            fraction_train=run.fraction_train,
            min_train_nodes=run.min_train_nodes,
            min_available_nodes=run.min_available_nodes,
            proximal_mu=run.proximal_mu,
        )
        self.run = run
        self.base_fingerprint = base_fingerprint
        self.norm_stats = ConfigRecord(norm_stats)
        self.expected = ExpectedUpdate.like(global_arrays, run.max_update_mb, run.update_encoding)
        self.broadcast = wire.Broadcast(run.update_encoding, run.wire_layout)
        self.aggregator = aggregator(run)
        self.server_optimizer = ServerOptimizer(run) if run.server_optimizer != "none" else None
        # A round needs min-replies usable updates, and as many as the aggregation needs to outvote hostile ones.
        self.replies_needed = max(run.min_replies, run.updates_needed)
        self.on_replies = on_replies
        self.dropped: dict[int, list[str]] = defaultdict(list)
        self.client_eval: dict[int, dict[str, float]] = {}  # round -> held-out loss of that round's global model
        self.names: dict[int, str] = {}  # node id -> the name its replies give
        self.traffic: dict[int, dict[str, int]] = defaultdict(lambda: {"bytes-sent": 0, "bytes-received": 0})
        self._round: _TrainRound | None = None
        self._global: ArrayRecord | None = None  # the arrays of the last configure_train

    def _messages(self, server_round: int, arrays: ArrayRecord, global_round: int, node_ids: list[int],
                  config: ConfigRecord, message_type: str) -> list[Message]:
        """One message per node carrying the global model after `global_round`, in the run's encoding: a node
        holding the previous global weights gets a delta, any other full weights."""
        config = {**config, "server-round": server_round, "base-fingerprint": self.base_fingerprint}
        weights = wire.unpack(arrays)  # no copy: the record stays alive
        contents, sent = self.broadcast.send(weights, global_round, node_ids, config)
        self.traffic[server_round]["bytes-sent"] += sent
        for content in {id(c): c for c in contents.values()}.values():  # nodes share the delta and the full one
            content["norm-stats"] = self.norm_stats
        return [Message(content=contents[n], message_type=message_type, dst_node_id=n) for n in node_ids]

    def _full_weights_message(self, server_round: int, node_id: int) -> Message:
        """The last train message's global model in full fp32, for `node_id`."""
        content = self.broadcast.full()
        content["norm-stats"] = self.norm_stats
        self.traffic[server_round]["bytes-sent"] += wire.update_bytes(content["arrays"])
        log.warning("full_weights_resent", round=server_round, node_id=node_id, node=self.names.get(node_id, "?"),
                    why="the node holds no reference for the round's delta (its worker restarted)")
        return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._global = arrays
        wait_for_nodes(grid, self.run.min_available_nodes, self.run.node_wait_timeout, self.names)
        sample_size = max(int(len(list(grid.get_node_ids())) * self.fraction_train), self.min_train_nodes)
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, sample_size)
        config["proximal-mu"] = self.proximal_mu
        config["lr"] = self.run.round_lr(server_round)
        # The arrays sent are the global model after the previous round: evaluate it on the way, if that was due.
        config["evaluate-received"] = server_round > 1 and self.is_eval_round(server_round - 1)
        return self._messages(server_round, arrays, server_round - 1, node_ids, config, MessageType.TRAIN)

    def is_eval_round(self, server_round: int) -> bool:
        return server_round % self.run.eval_frequency == 0 or server_round == self.run.num_server_rounds

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        """Evaluate messages (only the final model gets them) for the nodes connected now (a node lost in the
        last round must not hold the run, and its last checkpoint, back until it returns); with `fraction-train`
        below 1, for as large a share of them as trains in a round, so a federation of thousands is not asked
        all at once."""
        if not self.is_eval_round(server_round):
            return []
        node_ids = sorted(wait_for_nodes(grid, 1, self.run.node_wait_timeout, self.names))
        wanted = min(len(node_ids), max(math.ceil(len(node_ids) * self.fraction_train), self.min_train_nodes))
        node_ids = sorted(random.Random(self.run.seed + server_round).sample(node_ids, wanted))
        return self._messages(server_round, arrays, server_round, node_ids, config, MessageType.EVALUATE)

    def _screen(self, kind: str, server_round: int, reply: Message, expected: ExpectedUpdate | None) -> NodeReport | None:
        """The reply's report if it is usable; else None, with the reason logged and kept for the run report. A packed
        reply's records are taken out of its update's header first."""
        problem = None
        if not reply.has_error():
            try:
                reply.content = wire.unpack_records(reply.content)
            except ValueError as exc:
                problem = f"update cannot be decoded: {exc}"
        problem = problem or reply_problem(reply, expected)
        if problem is not None:
            self.dropped[server_round].append(f"{kind} node {reply.metadata.src_node_id}: {problem}")
            log.warning("reply_dropped", kind=kind, round=server_round, node_id=reply.metadata.src_node_id, why=problem)
            return None
        report = node_report(reply)
        self.names[reply.metadata.src_node_id] = report.name
        self.broadcast.received(reply.metadata.src_node_id)  # it decoded what it was sent: it holds the reference
        return report

    def missing(self, kind: str, server_round: int, node_ids: Iterable[int]) -> None:
        """Nodes sent a message that did not reply before the round's deadline: left out, and said so."""
        for node_id in node_ids:
            name = self.names.get(node_id, "?")
            self.dropped[server_round].append(f"{kind} node {node_id} ({name}): no reply within round-timeout")
            log.warning("reply_missing", kind=kind, round=server_round, node_id=node_id, node=name,
                        round_timeout=self.run.round_timeout)

    def open_train_round(self, server_round: int) -> None:
        """Start taking `server_round`'s train replies, one at a time as they arrive (`receive_train`)."""
        self._round = _TrainRound(server_round, WeightedMean() if self.run.aggregation == "fedprox" else None,
                                  self._global)

    def receive_train(self, reply: Message) -> Message | None:
        """Screen one train reply and fold it in (or, for a robust aggregation, keep it decoded). The caller can
        let the reply go afterwards. Returns a message to send in the reply's place when the node could not apply
        the delta it was sent (its worker restarted mid-round and lost its reference): the round's full weights,
        once per node and round, so the node's update still counts this round."""
        current = self._round
        node_id = reply.metadata.src_node_id
        if reply.has_error() and wire.is_reference_missing(reply.error.reason) and node_id not in current.resent:
            current.resent.add(node_id)
            return self._full_weights_message(current.server_round, node_id)
        if not reply.has_error() and "arrays" in reply.content.array_records:
            self.traffic[current.server_round]["bytes-received"] += wire.update_bytes(reply.content["arrays"])
        report = self._screen("train", current.server_round, reply, self.expected)
        if report is None:
            return
        current.reports.append(report)
        current.metrics.append(RecordDict({"metrics": next(iter(reply.content.metric_records.values()))}))
        update = self.broadcast.rebuild(reply.content["arrays"], self.expected.layout)
        if current.mean is not None:
            current.mean.add(update, float(report.metrics["num-examples"]))
        else:
            reply.content["arrays"] = wire.encode(codec.FP32, dict(update), wire.PER_ARRAY)  # as Flower's reads it
            current.kept.append(reply)

    def close_train_round(self) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's new global arrays and train metrics, or (None, None) without enough usable replies."""
        current, self._round = self._round, None
        if self.on_replies is not None:
            self.on_replies("train", current.server_round, current.reports)
        if len(current.reports) < self.replies_needed:
            return None, None
        self._received_eval(current.server_round - 1, current.reports)
        # The round's train loss is every usable node's, whichever updates the aggregation keeps (Krum keeps one).
        metrics = self.train_metrics_aggr_fn(current.metrics, self.weighted_by_key)
        if current.mean is not None:
            arrays = current.mean.result()
        else:
            arrays, _ = self.aggregator.aggregate_train(current.server_round, current.kept)
        if self.server_optimizer is not None:
            arrays = self.server_optimizer.step(current.server_round, current.trained_from, arrays)
        return arrays, metrics

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Flower's batch interface to the same: all of a round's replies at once."""
        self.open_train_round(server_round)
        for reply in replies:
            self.receive_train(reply)
        return self.close_train_round()

    def _received_eval(self, evaluated_round: int, reports: list[NodeReport]) -> None:
        """The nodes' held-out loss of round `evaluated_round`'s global model, from train replies that carry it:
        reported as that round's evaluate replies, averaged by held-out samples."""
        evaluated = [
            NodeReport(r.node_id, r.name, r.dataset, {"eval-loss": r.metrics[RECEIVED_EVAL_LOSS],
                                                      "num-examples": r.metrics[RECEIVED_EVAL_EXAMPLES]})
            for r in reports if RECEIVED_EVAL_LOSS in r.metrics
        ]
        if not evaluated:
            return
        total = sum(r.metrics["num-examples"] for r in evaluated)
        loss = sum(r.metrics["eval-loss"] * r.metrics["num-examples"] for r in evaluated) / total
        self.client_eval[evaluated_round] = {"eval-loss": loss, "num-examples": total}
        if self.on_replies is not None:
            self.on_replies("evaluate", evaluated_round, evaluated)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        good, reports = [], []
        for reply in replies:
            if (report := self._screen("evaluate", server_round, reply, None)) is not None:
                good.append(reply)
                reports.append(report)
        if self.on_replies is not None:
            self.on_replies("evaluate", server_round, reports)
        if not good:
            return None
        self.client_eval[server_round] = dict(super().aggregate_evaluate(server_round, good))
        return self.client_eval[server_round]


@dataclass
class _TrainRound:
    """What a round keeps of its train replies while they arrive: a running mean (or, for a robust aggregation,
    the decoded replies), and the small things: reports and metrics."""

    server_round: int
    mean: WeightedMean | None
    trained_from: ArrayRecord | None  # the global arrays the round's train messages carried
    kept: list[Message] = field(default_factory=list)
    reports: list[NodeReport] = field(default_factory=list)
    metrics: list[RecordDict] = field(default_factory=list)
    resent: set[int] = field(default_factory=set)  # nodes sent full weights after a ReferenceMissing reply
