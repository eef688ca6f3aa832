"""A reply before it is used: who sent it (`NodeReport`) and whether it is usable (`reply_problem`).

A failed node, a reply larger than `max-update-mb`, arrays with unexpected names, shapes or dtypes or non-finite
values, or no sample count make a reply unusable; the strategy drops it and says why. Cheap checks come first: a
reply's size and its arrays' declared names, shapes and dtypes are read before any array is decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from app.federation import codec, wire
from app.learning.data import public_name


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
