"""Updates on the wire: the Flower records that carry an update's arrays, and the reference both ends keep.

A delta encoding (app.federation.codec) sends differences against a *reference*: global weights that the server and every
node holding them have bit for bit. The server keeps one reference (`Broadcast`). Each round it moves the reference
toward the new global weights by one encoded delta, which it sends to the nodes that hold the previous reference;
nodes that do not (round 1, a new node, one that missed a round or restarted) get the new reference in full fp32.
Since the delta is always taken against what the nodes hold, the downlink's quantization error never piles up:
whatever one round's delta misses, the next round's delta includes.

A node trains from the reference and sends its update as a delta against it, with error feedback: what
quantization dropped this round is added to the next round's update instead of being lost (`NodeCodec`). The
node keeps the reference and that residual in a RecordDict it is given (the warm worker's memory, or the
ClientApp's `context.state` in a simulation). The server rebuilds each update in fp32 against the reference; the
global model and its checkpoints stay in the training precision.

The arrays of an update travel in one of two wire layouts (`wire-layout`):

    packed      one Flower Array holding a safetensors buffer of all of them (dtype uint8, stype "safetensors"):
                a message is a handful of objects in Flower's object store, each fetched with its own request,
                and a large buffer still goes in Flower's own chunks;
    per-array   one Flower Array per wire array (Flower's usual ArrayRecord): two hundred requests for the tiny
                model's int8 update, kept to measure the difference.

A packed reply carries its other records (the node's metrics and name) in the update's safetensors header
(`pack_records`), so that a reply is five objects, not one more per record. A receiver reads either layout;
`unpack` checks a packed buffer's index (names, dtypes, shapes, offsets) before any value is read, and returns
read-only views into the message's bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from safetensors.numpy import save as safetensors_bytes

from app.federation.codec import FP32, Layout, decode_array, decode_parts, encode_array, encode_parts, is_delta, layout_of
from app.common.config import WIRE_LAYOUTS
from app.common.errors import UserError

PACKED, PER_ARRAY = WIRE_LAYOUTS
PACKED_NAME, SAFETENSORS = "update", "safetensors"  # a packed record's one array, and its Flower stype
RECORDS = "records"  # the one safetensors __metadata__ key a packed reply has: its other records, as JSON
FULL = -1  # a message's reference-round when its arrays are full weights, not a delta


class ReferenceMissing(UserError):
    """A node was sent a delta against global weights it does not hold (its worker restarted while the message
    was on its way): the server sends it the same round's full weights (`Broadcast.full`)."""


def is_reference_missing(reason: str) -> bool:
    """Whether a node's error reply is a ReferenceMissing: the node's ClientApp or its worker raised it, and
    Flower carries only the exception's text, which names the class either way."""
    return ReferenceMissing.__name__ in reason


# --- a whole set of weights in a record -----------------------------------------------------------------------------

def encode(encoding: str, values: Mapping[str, np.ndarray], wire: str = PACKED) -> ArrayRecord:
    return pack(encode_parts(encoding, values), wire)


def pack(parts: Mapping[str, np.ndarray], wire: str = PACKED) -> ArrayRecord:
    """Wire arrays -> the ArrayRecord that carries them in layout `wire`."""
    if wire == PER_ARRAY:
        return ArrayRecord({name: Array(np.asarray(part)) for name, part in parts.items()})
    if wire != PACKED:
        raise ValueError(f"unknown wire layout {wire!r}")
    return _packed_record(safetensors_bytes(dict(parts)))


def _packed_record(blob: bytes) -> ArrayRecord:
    return ArrayRecord({PACKED_NAME: Array(dtype="uint8", shape=(len(blob),), stype=SAFETENSORS, data=blob)})


# safetensors dtype codes of the arrays an update is made of (anything else is refused, never guessed)
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32}


def unpack(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Wire array name -> read-only view of its values in `record`'s bytes, in either layout. A record that is
    not well formed (a safetensors index whose offsets do not tile its buffer, an unknown dtype, an array whose
    bytes disagree with its declared shape) raises ValueError naming the array."""
    if (array := _packed_array(record)) is not None:
        return _unpack_safetensors(array.data)
    parts = {}
    for name, array in record.items():
        try:
            values = view(array)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"array {name!r} cannot be decoded: {exc}") from None
        if (values.shape, str(values.dtype)) != (tuple(array.shape), array.dtype):
            raise ValueError(f"array {name!r} is declared {array.dtype}{list(array.shape)} but holds "
                             f"{values.dtype}{list(values.shape)}")
        parts[name] = values
    return parts


def update_bytes(record: ArrayRecord) -> int:
    """The bytes of an update's wire arrays, as both ends count a message's traffic: the values alone, whatever the
    layout (no safetensors index, .npy headers or a reply's records), so that a node's bytes sent are the server's
    bytes received. A record that does not decode counts its raw size."""
    try:
        return sum(values.nbytes for values in unpack(record).values())
    except ValueError:
        return sum(len(array.data) for array in record.values())


def _packed_array(record: ArrayRecord) -> Array | None:
    """The one safetensors Array of a packed record, or None for a per-array one."""
    if len(record) == 1 and (array := next(iter(record.values()))).stype == SAFETENSORS:
        return array
    return None


def _header(data: bytes) -> tuple[dict, int]:
    """A safetensors buffer's JSON header (its index, and __metadata__ if any) and the header's size in bytes."""
    if len(data) < 8 or (size := int.from_bytes(data[:8], "little")) > len(data) - 8:
        raise ValueError("packed update is cut short before the end of its safetensors header")
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"packed update's safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("packed update's safetensors header is not a JSON object")
    return header, size


def _metadata(header: dict) -> dict[str, str]:
    """The header's __metadata__: none, or the one key this project writes (`pack_records`). Anything else is free
    text a node could leak anything in, and is refused."""
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or set(metadata) - {RECORDS} or not all(isinstance(v, str)
                                                                             for v in metadata.values()):
        raise ValueError(f"packed update's safetensors __metadata__ must be at most {{{RECORDS!r}: <JSON text>}}, "
                         f"got keys {sorted(metadata) if isinstance(metadata, dict) else type(metadata).__name__}")
    return metadata


def _unpack_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The safetensors format (8-byte little-endian header size, a JSON index, the values), read without a copy,
    strictly: the index's arrays must cover the buffer exactly, one after another, as safetensors writes them."""
    index, size = _header(data)
    _metadata(index)
    index = {name: entry for name, entry in index.items() if name != "__metadata__"}
    start, end, parts = 8 + size, len(data), {}
    position = 0
    for name, entry in sorted(index.items(), key=lambda item: _offsets(item)[0]):
        begin, stop = _offsets((name, entry))
        dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
        shape = entry.get("shape")
        if dtype is None:
            raise ValueError(f"array {name!r} has dtype {entry.get('dtype')!r}, not one an update is made of")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ValueError(f"array {name!r} has no valid shape (got {shape!r})")
        count = int(np.prod(shape, dtype=np.int64))
        if begin != position or stop - begin != count * np.dtype(dtype).itemsize or start + stop > end:
            raise ValueError(f"array {name!r}'s offsets [{begin}, {stop}] do not fit {np.dtype(dtype).name}{shape} "
                             f"after byte {position} of a {end - start}-byte buffer")
        parts[name] = np.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(shape)
        position = stop
    if position != end - start:
        raise ValueError(f"packed update has {end - start - position} bytes that no array of its index covers")
    return parts


# --- a whole reply: its records inside the packed update ------------------------------------------------------------

def pack_records(content: RecordDict) -> RecordDict:
    """A reply whose update is packed, as that one record: its other records (the node's metrics and name, at most
    a few hundred bytes) move into the update's safetensors header, so the ServerApp pulls five objects per reply
    (Message, RecordDict, ArrayRecord, Array, and one chunk per few MB of update) instead of one more per record.
    Any other content (per-array, or with no update) is returned as it is."""
    arrays = content.array_records.get("arrays")
    if arrays is None or len(content.array_records) != 1 or (array := _packed_array(arrays)) is None:
        return content
    records = {}
    for name, record in content.items():
        if name == "arrays":
            continue
        if any(isinstance(v, bytes) or (isinstance(v, list) and any(isinstance(x, bytes) for x in v))
               for v in record.values()):
            raise ValueError(f"record {name!r} holds bytes, which a packed reply's JSON header cannot carry")
        records[name] = {"kind": "metrics" if isinstance(record, MetricRecord) else "config", "values": dict(record)}
    header, size = _header(array.data)
    header["__metadata__"] = {RECORDS: json.dumps(records)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # as safetensors pads it: the values stay 8-byte aligned
    return RecordDict({"arrays": _packed_record(len(text).to_bytes(8, "little") + text + array.data[8 + size:])})


def unpack_records(content: RecordDict) -> RecordDict:
    """The inverse of pack_records: the reply's records as Flower's records again, beside its update. A header whose
    records are not well formed raises ValueError naming the record."""
    arrays = content.array_records.get("arrays")
    if arrays is None or len(content) != 1 or (array := _packed_array(arrays)) is None:
        return content
    text = _metadata(_header(array.data)[0]).get(RECORDS)
    if text is None:
        return content
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"packed update's records are not JSON: {exc}") from None
    if not isinstance(records, dict):
        raise ValueError("packed update's records are not a JSON object")
    unpacked = RecordDict({"arrays": arrays})
    for name, entry in records.items():
        kind = entry.get("kind") if isinstance(entry, dict) else None
        values = entry.get("values") if isinstance(entry, dict) else None
        if name == "arrays" or kind not in _RECORD_KINDS or not isinstance(values, dict):
            raise ValueError(f"packed update's record {name!r} is not a metrics or config record")
        try:
            unpacked[name] = _RECORD_KINDS[kind](values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"packed update's record {name!r}: {exc}") from None
    return unpacked


_RECORD_KINDS = {"metrics": MetricRecord, "config": ConfigRecord}


def _offsets(item: tuple[str, object]) -> tuple[int, int]:
    name, entry = item
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise ValueError(f"array {name!r} has no valid data_offsets in the packed update's index")
    return offsets[0], offsets[1]


def view(array: Array) -> np.ndarray:
    """A read-only view of a per-array Array's values, without the copy `Array.numpy()` makes: decoding a 400 MB
    update then costs no second 400 MB. Arrays that are not plain .npy data (never pickles) are refused as numpy()
    would."""
    if array.stype != "numpy.ndarray":
        raise TypeError(f"unsupported serialization type {array.stype!r}")
    buffer = io.BytesIO(array.data)
    version = np.lib.format.read_magic(buffer)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read_header:
        raise ValueError(f".npy format version {version} is not one np.save writes for weights")
    shape, fortran_order, dtype = read_header[version](buffer)
    if dtype.hasobject or fortran_order:
        raise ValueError("object or Fortran-ordered arrays are not model weights")
    return np.frombuffer(array.data, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)),
                         offset=buffer.tell()).reshape(shape)


def decoded(encoding: str, record: ArrayRecord, layout: Layout) -> Iterator[tuple[str, np.ndarray]]:
    """(name, fp32 values) for each array of `layout`, one at a time: the caller holds one decoded array at once
    (fp32: a read-only view of the record's bytes)."""
    return decode_parts(encoding, unpack(record), layout)


def decode(encoding: str, record: ArrayRecord, layout: Layout) -> dict[str, np.ndarray]:
    return dict(decoded(encoding, record, layout))


def numpy_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays, writable (copies)."""
    return {name: np.array(values) for name, values in unpack(record).items()}


# --- the server's side ---------------------------------------------------------------------------------------------

@dataclass
class Broadcast:
    """The server's end of the downlink: the reference the nodes hold, and which nodes hold it.

    Each `send` moves the reference to the new global weights. A node that replied without error to the previous
    one (`received`) holds the previous reference and gets the delta; any other node gets full weights."""

    encoding: str
    wire: str = PACKED
    reference: dict[str, np.ndarray] | None = None
    reference_round: int = FULL
    holders: set[int] = field(default_factory=set)
    base: Mapping[str, np.ndarray] | None = None  # the exact global weights of the last send
    _sent_to: set[int] = field(default_factory=set)
    _config: dict = field(default_factory=dict)  # the last send's config
    _full: RecordDict | None = None  # the last send's full weights, built for the first node that needs them

    def send(self, weights: Mapping[str, np.ndarray], global_round: int, node_ids: list[int],
             config: Mapping | None = None) -> tuple[dict[int, RecordDict], int]:
        """Contents for `node_ids` carrying `weights`, the global model after `global_round`: `arrays`, and `config`
        with the keys a node decodes them by. Returns them with the bytes of arrays they carry in all."""
        self._config = {**(config or {}), "encoding": self.encoding, "global-round": global_round}
        self.base, self._full, self._sent_to = weights, None, set(node_ids)
        if not is_delta(self.encoding):
            full = self.full()
            return {n: full for n in node_ids}, len(node_ids) * update_bytes(full["arrays"])
        delta = None
        if self.reference is None:
            self.reference = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        else:  # the reference moves by exactly what the nodes will decode, so both ends stay equal
            delta = RecordDict({"arrays": encode(self.encoding, {k: weights[k] - self.reference[k] for k in weights},
                                                 self.wire),
                                "config": ConfigRecord({**self._config, "reference-round": self.reference_round})})
            for name, step in decoded(self.encoding, delta["arrays"], layout_of(weights)):
                self.reference[name] += step
        contents = {n: delta if delta is not None and n in self.holders else self.full() for n in node_ids}
        self.reference_round, self.holders = global_round, set()
        return contents, sum(update_bytes(content["arrays"]) for content in contents.values())

    def full(self) -> RecordDict:
        """The last send's weights in full fp32 (the reference, for a delta encoding), with its config: for a node
        that holds no reference, and for one that said so (ReferenceMissing) in reply to a delta."""
        if self._full is None:
            weights = self.reference if is_delta(self.encoding) else self.base
            self._full = RecordDict({"arrays": encode(FP32, weights, self.wire),
                                     "config": ConfigRecord({**self._config, "reference-round": FULL})})
        return self._full

    def received(self, node_id: int) -> None:
        """`node_id` replied without error to the last `send`: it holds the current reference."""
        if node_id in self._sent_to:
            self.holders.add(node_id)

    def rebuild(self, record: ArrayRecord, layout: Layout) -> Iterator[tuple[str, np.ndarray]]:
        """A node's update, decoded to full fp32 weights one array at a time. A delta is added to the exact global
        weights, not to the reference the node trained from: the downlink's rounding then never enters the
        global model (the next round's delta to the nodes carries it instead)."""
        for name, values in decoded(self.encoding, record, layout):
            yield name, (values + self.base[name]) if is_delta(self.encoding) else values


# --- a node's side -------------------------------------------------------------------------------------------------

REFERENCE, RESIDUAL, CODEC = "codec-reference", "codec-residual", "codec"


@dataclass
class NodeCodec:
    """A node's end of both links, keeping the reference and the error-feedback residual in `state` between a
    run's messages."""

    state: RecordDict

    def receive(self, content: RecordDict) -> dict[str, np.ndarray]:
        """The global weights a message carries, in fp32."""
        config = content["config"]
        encoding = str(config.get("encoding", FP32))
        base = int(config.get("reference-round", FULL))
        arrays = content["arrays"]
        if base == FULL:
            weights = numpy_arrays(arrays)
        else:
            held = self._reference_round()
            if held != base:
                raise ReferenceMissing(
                    f"the server sent a delta against round {base}'s global weights, this node holds "
                    + (f"round {held}'s" if held is not None else "none")
                    + " (its worker restarted): the server sends it this round's full weights")
            reference = numpy_arrays(self.state[REFERENCE])
            weights = {k: reference[k] + v for k, v in decoded(encoding, arrays, layout_of(reference))}
        if is_delta(encoding):
            self.state[REFERENCE] = encode(FP32, weights)
            self.state[CODEC] = ConfigRecord({"reference-round": int(config["global-round"])})
        return weights

    def _reference_round(self) -> int | None:
        if CODEC not in self.state.config_records or REFERENCE not in self.state.array_records:
            return None
        return int(self.state[CODEC]["reference-round"])

    def send(self, encoding: str, trained: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
             wire: str = PACKED) -> ArrayRecord:
        """The update to reply with, in wire layout `wire`: `trained` itself (fp32), or its delta against
        `reference` with error feedback."""
        if not is_delta(encoding):
            return encode(FP32, trained, wire)
        residual = numpy_arrays(self.state[RESIDUAL]) if RESIDUAL in self.state.array_records else {}
        wire_parts, carried = {}, {}
        for name, values in trained.items():
            update = values - reference[name] + residual.get(name, 0.0)
            parts = encode_array(encoding, update)
            wire_parts.update({name + suffix: part for suffix, part in parts.items()})
            carried[name] = update - decode_array(encoding, parts, update.shape)
        self.state[RESIDUAL] = encode(FP32, carried)
        return pack(wire_parts, wire)
