"""app.federation.wire: the records an update travels in (both wire layouts, a packed reply's records), the server's
reference and the nodes' error feedback."""

import json
import re

import numpy as np
import pytest
import safetensors.numpy
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from app.federation import codec, wire
from app.federation.codec import ENCODINGS, FP32
from app.federation.wire import Broadcast, NodeCodec, ReferenceMissing
from tests.federation.test_codec import RELATIVE_STEP

RNG = np.random.default_rng(0)
WEIGHTS = {"expert.w": RNG.normal(size=(300, 7)).astype(np.float32), "expert.b": RNG.normal(size=(5,)).astype(np.float32)}
LAYOUT = codec.layout_of(WEIGHTS)


def max_error(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.parametrize("layout", wire.WIRE_LAYOUTS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wire_layout_is_what_encode_writes(encoding, layout):
    record = wire.encode(encoding, WEIGHTS, layout)
    assert {k: (a.shape, str(a.dtype)) for k, a in wire.unpack(record).items()} == codec.wire_layout(encoding, LAYOUT)
    assert len(record) == (1 if layout == wire.PACKED else len(codec.wire_layout(encoding, LAYOUT)))


def test_a_packed_update_is_one_standard_safetensors_buffer_read_without_a_copy():
    record = wire.encode("int8-delta", WEIGHTS)
    (array,) = record.values()
    assert (array.stype, array.dtype, array.shape) == ("safetensors", "uint8", (len(array.data),))
    parts = wire.unpack(record)
    standard = safetensors.numpy.load(array.data)
    assert parts.keys() == standard.keys()
    for name, values in parts.items():
        np.testing.assert_array_equal(values, standard[name])
        assert not values.flags.writeable and np.shares_memory(values, np.frombuffer(array.data, np.uint8))


def packed(blob: bytes) -> ArrayRecord:
    return ArrayRecord({"update": Array(dtype="uint8", shape=(len(blob),), stype="safetensors", data=blob)})


def index(entries: dict) -> bytes:
    header = json.dumps(entries).encode()
    return len(header).to_bytes(8, "little") + header


GOOD = safetensors.numpy.save({"w": np.ones(4, np.float32), "w#scale": np.ones(1, np.float32)})


@pytest.mark.parametrize(("blob", "why"), [
    (GOOD[:6], "cut short before the end of its safetensors header"),
    (GOOD[:-4], "offsets [16, 20] do not fit float32[1]"),
    (GOOD + b"\0" * 8, "8 bytes that no array of its index covers"),
    (index({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}) + b"\0" * 12, "'v'"),
    (index({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}) + b"\0" * 4, "dtype 'BF16'"),
    (index({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}) + b"\0" * 8, "no valid shape"),
    (index({"w": {"dtype": "F32", "shape": [2]}}) + b"\0" * 8, "no valid data_offsets"),
    (b"\x04" + b"\0" * 7 + b"\xff\xfe[]", "not JSON"),
    (index([1]), "not a JSON object"),
    (safetensors.numpy.save({"w": np.ones(2, np.float32)}, metadata={"dataset": "/home/op"}), "__metadata__"),
    (safetensors.numpy.save({"w": np.ones(2, np.float32)}, metadata={"records": "{}", "x": "y"}), "__metadata__"),
])
def test_a_malformed_packed_update_is_refused_naming_what_is_wrong(blob, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        wire.unpack(packed(blob))


def _reply(layout: str) -> RecordDict:
    return RecordDict({"arrays": wire.encode("int8-delta", WEIGHTS, layout),
                       "metrics": MetricRecord({"num-examples": 24, "train-loss": 0.1 + 0.2, "losses": [1.5, 2.0]}),
                       "node": ConfigRecord({"node-name": "op0", "dataset": "embedded:operator-0", "warm": True})})


def test_a_packed_reply_is_one_record_of_one_array_and_unpacks_to_the_same_records():
    reply = _reply(wire.PACKED)
    sent = wire.pack_records(reply)
    assert list(sent) == ["arrays"] and len(sent["arrays"]) == 1
    opened = wire.unpack_records(sent)
    assert sorted(opened) == ["arrays", "metrics", "node"]
    assert dict(opened["metrics"]) == dict(reply["metrics"]) and isinstance(opened["metrics"], MetricRecord)
    assert dict(opened["node"]) == dict(reply["node"]) and isinstance(opened["node"], ConfigRecord)
    assert type(opened["metrics"]["num-examples"]) is int  # JSON keeps ints and floats apart, as Flower does
    for name, values in wire.unpack(reply["arrays"]).items():
        np.testing.assert_array_equal(wire.unpack(opened["arrays"])[name], values)
    assert safetensors.numpy.load(sent["arrays"]["update"].data).keys() == wire.unpack(reply["arrays"]).keys()


def test_a_per_array_reply_or_one_without_an_update_travels_as_it_is():
    for content in (_reply(wire.PER_ARRAY), RecordDict({"metrics": MetricRecord({"num-examples": 1})})):
        assert wire.pack_records(content) is content and wire.unpack_records(content) is content


@pytest.mark.parametrize(("records", "why"), [
    ("[1]", "not a JSON object"),
    ("{", "not JSON"),
    ('{"metrics": {"kind": "array", "values": {}}}', "record 'metrics' is not a metrics or config record"),
    ('{"arrays": {"kind": "config", "values": {}}}', "record 'arrays' is not"),
    ('{"metrics": {"kind": "metrics", "values": {"loss": "low"}}}', "record 'metrics'"),
])
def test_a_packed_reply_with_malformed_records_is_refused_naming_the_record(records, why):
    blob = safetensors.numpy.save({"w": np.ones(2, np.float32)}, metadata={"records": records})
    with pytest.raises(ValueError, match=re.escape(why)):
        wire.unpack_records(RecordDict({"arrays": packed(blob)}))


def federate(encoding: str, rounds: int, nodes: list[int], sampled=lambda rnd: None, lr: float = 0.01):
    """`rounds` of a toy federation: each node moves the weights it received by a fixed step of its own; the
    server averages. Returns the server's global weights, what each node decoded, and the messages' kinds."""
    broadcast, states = Broadcast(encoding), {n: RecordDict() for n in nodes}
    steps = {n: {k: lr * RNG.normal(size=v.shape).astype(np.float32) for k, v in WEIGHTS.items()} for n in nodes}
    global_weights, kinds, held = dict(WEIGHTS), [], {}
    for rnd in range(rounds):
        present = sampled(rnd) or nodes
        contents, _ = broadcast.send(global_weights, rnd, present)
        kinds.append({n: "full" if contents[n]["config"]["reference-round"] == wire.FULL else "delta" for n in present})
        updates = []
        for n in present:
            node = NodeCodec(states[n])
            held[n] = node.receive(contents[n])
            trained = {k: held[n][k] + steps[n][k] for k in WEIGHTS}
            updates.append(dict(broadcast.rebuild(node.send(encoding, trained, held[n]), LAYOUT)))
            broadcast.received(n)
        global_weights = {k: np.mean([u[k] for u in updates], axis=0) for k in WEIGHTS}
    return global_weights, held, kinds, broadcast, steps


@pytest.mark.parametrize("encoding", ["bf16", "int8-delta", "int4-delta"])
def test_nodes_and_server_hold_the_same_reference_bit_for_bit(encoding):
    _, held, _, broadcast, _ = federate(encoding, rounds=4, nodes=[1, 2])
    for n in (1, 2):
        assert all(np.array_equal(held[n][k], broadcast.reference[k]) for k in WEIGHTS)


@pytest.mark.parametrize("encoding", ["bf16", "int8-delta", "int4-delta"])
def test_error_feedback_keeps_the_error_from_piling_up(encoding):
    """Every node adds the same step each round: after many rounds the global weights are off by about one
    round's quantization error, not by the sum of all rounds' (which is what dropping the error would cost)."""
    rounds = 30
    final, _, _, _, steps = federate(encoding, rounds=rounds, nodes=[1, 2])
    exact = {k: WEIGHTS[k] + rounds * (steps[1][k] + steps[2][k]) / 2 for k in WEIGHTS}
    per_round = max(float(np.abs(steps[n][k]).max()) for n in (1, 2) for k in WEIGHTS) * RELATIVE_STEP[encoding]
    assert max_error(final, exact) < 4 * per_round
    fp32_final, _, _, _, steps = federate(FP32, rounds=rounds, nodes=[1, 2])
    exact = {k: WEIGHTS[k] + rounds * (steps[1][k] + steps[2][k]) / 2 for k in WEIGHTS}
    assert max_error(fp32_final, exact) < 1e-5


def test_deltas_both_ways_after_the_first_round():
    _, _, kinds, _, _ = federate("int8-delta", rounds=3, nodes=[1, 2])
    assert kinds == [{1: "full", 2: "full"}, {1: "delta", 2: "delta"}, {1: "delta", 2: "delta"}]
    _, _, kinds, _, _ = federate(FP32, rounds=2, nodes=[1, 2])
    assert kinds == [{1: "full", 2: "full"}] * 2


def test_a_node_that_missed_a_round_gets_full_weights():
    _, held, kinds, broadcast, _ = federate("int8-delta", rounds=4, nodes=[1, 2],
                                            sampled=lambda rnd: [1] if rnd == 1 else None)
    assert kinds[1] == {1: "delta"}
    assert kinds[2] == {1: "delta", 2: "full"}, "node 2 holds round 0's weights, not round 1's"
    assert kinds[3] == {1: "delta", 2: "delta"}
    assert all(np.array_equal(held[2][k], broadcast.reference[k]) for k in WEIGHTS)


def test_a_node_sent_a_delta_it_cannot_apply_says_so():
    broadcast = Broadcast("int8-delta")
    broadcast.send(WEIGHTS, 0, [1])
    broadcast.received(1)
    contents, _ = broadcast.send({k: v + 1 for k, v in WEIGHTS.items()}, 1, [1])
    with pytest.raises(ReferenceMissing, match="holds none"):  # a node that restarted and lost what it held
        NodeCodec(RecordDict()).receive(contents[1])


def test_a_node_that_lost_its_reference_mid_round_gets_the_rounds_full_weights_and_holds_the_reference():
    broadcast = Broadcast("int8-delta")
    broadcast.send(WEIGHTS, 0, [1])
    broadcast.received(1)
    moved = {k: v + 0.25 for k, v in WEIGHTS.items()}
    contents, _ = broadcast.send(moved, 1, [1], {"lr": 0.5})
    restarted = NodeCodec(RecordDict())
    with pytest.raises(ReferenceMissing) as refused:
        restarted.receive(contents[1])
    assert wire.is_reference_missing(f"{type(refused.value).__name__}: {refused.value}")
    full = broadcast.full()
    assert full["config"]["reference-round"] == wire.FULL and full["config"]["global-round"] == 1
    assert full["config"]["lr"] == 0.5, "the round's config travels with its full weights"
    held = restarted.receive(full)
    assert all(np.array_equal(held[k], broadcast.reference[k]) for k in WEIGHTS), "what the delta would have given"
    broadcast.received(1)
    following, _ = broadcast.send({k: v + 0.5 for k, v in WEIGHTS.items()}, 2, [1])
    assert following[1]["config"]["reference-round"] == 1, "the node is back on deltas the next round"
    restarted.receive(following[1])


def test_a_node_that_errs_is_sent_full_weights_next():
    broadcast = Broadcast("int8-delta")
    broadcast.send(WEIGHTS, 0, [1, 2])
    broadcast.received(1)  # node 2's reply was an error
    contents, sent = broadcast.send(WEIGHTS, 1, [1, 2])
    assert contents[1]["config"]["reference-round"] == 0 and contents[2]["config"]["reference-round"] == wire.FULL
    assert sent == sum(wire.update_bytes(contents[n]["arrays"]) for n in (1, 2))


def test_a_node_counts_the_bytes_it_sends_as_the_server_counts_them_received():
    update = wire.NodeCodec(RecordDict()).send("int8-delta", {k: v + 1 for k, v in WEIGHTS.items()}, WEIGHTS)
    reply = RecordDict({"arrays": update, "metrics": MetricRecord({"num-examples": 1, "bytes-sent": 10**6})})
    received = wire.pack_records(reply)["arrays"]
    assert received.count_bytes() > update.count_bytes()  # the records ride along in the header
    assert wire.update_bytes(received) == wire.update_bytes(update) == sum(
        part.nbytes for part in codec.encode_parts("int8-delta", WEIGHTS).values())
    for layout in wire.WIRE_LAYOUTS:  # the values alone: the same whatever the layout
        assert wire.update_bytes(wire.encode("fp32", WEIGHTS, layout)) == sum(v.nbytes for v in WEIGHTS.values())
