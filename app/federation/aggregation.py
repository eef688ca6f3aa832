"""The arithmetic that turns a round's screened updates into the next global model.

By default FedProx's sample-weighted average, streamed (`WeightedMean`: each update folded in as it arrives and let
go, so the server's memory does not grow with the number of nodes); with run-config `aggregation` one of Flower's
robust strategies (`aggregator`); with `server-optimizer` a server-side optimizer step on the aggregate
(`ServerOptimizer`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp.strategy import (Bulyan, FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, FedYogi,
                                     Krum, MultiKrum)

from app.common.config import RunConfig
from app.federation import wire


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
