"""FedVLA, the federation's strategy: Flower's FedProx, holding a round's arithmetic. The round loop that calls it is
app.federation.rounds.

- every message carries the federation's normalization stats, the round's learning rate and the fingerprint of
  the frozen base model (a node with a different base refuses to train instead of poisoning the average);
- one message per node per round: a node evaluates the global model it receives before it trains on it, when the
  previous round was an evaluation round (every `eval-frequency` rounds), and reports that loss in its train
  reply; only the final global model needs evaluate messages of its own;
- the weights travel in the run's `update-encoding` both ways (app.federation.codec, in app.federation.wire's
  records): full fp32, or deltas against the global weights the nodes already hold, which `Broadcast` tracks;
- replies are screened before they are used (app.federation.screening), and folded into the round's aggregate
  one at a time as they arrive (app.federation.aggregation), each node's metrics kept for the run report;
- a round closes with the usable replies it has (a node lost mid-round is left out) if at least `min-replies`.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedProx
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from app.common.config import RunConfig
from app.common.telemetry import get_logger
from app.federation import codec, wire
from app.federation.aggregation import ServerOptimizer, WeightedMean, aggregator
from app.federation.exchange import wait_for_nodes
from app.federation.screening import ExpectedUpdate, NodeReport, node_report, reply_problem
from app.learning.learner import RECEIVED_EVAL_EXAMPLES, RECEIVED_EVAL_LOSS

log = get_logger(__name__)


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
