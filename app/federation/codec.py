"""Update encodings, the arithmetic of how the trainable weights travel: fp32 values <-> the arrays that carry them.

    fp32        the weights as they are: exact, and nothing kept between rounds on either side;
    bf16        deltas in bfloat16 (half of fp32);
    int8-delta  deltas quantized blockwise to int8, one fp32 scale per BLOCK values (about a quarter of fp32);
    int4-delta  the same with 4-bit values, two to a byte (about an eighth).

A delta encoding carries differences against a reference that both ends hold (app.federation.wire keeps it, and carries the
arrays in Flower's records). Everything here is NumPy and imports no Flower: the server's aggregation and screening
use it, and a node's tensors convert without a copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from app.common.config import UPDATE_ENCODINGS

ENCODINGS = FP32, BF16, INT8_DELTA, INT4_DELTA = UPDATE_ENCODINGS
BLOCK = 128  # values per quantization scale: fp32 scales add 1/32 of a byte per int8 value
SCALE = "#scale"  # suffix of a quantized array's scales

Layout = dict[str, tuple[tuple[int, ...], str]]  # array name -> (shape, dtype)


# --- one array: fp32 values <-> wire arrays ------------------------------------------------------------------------

def _blocks(values: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    padded = np.zeros(-(-flat.size // BLOCK) * BLOCK, dtype=np.float32)
    padded[: flat.size] = flat
    return padded.reshape(-1, BLOCK)


def _quantize(values: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Blockwise absmax quantization to integers in [-levels, levels]: (codes int8 [blocks, BLOCK], scales)."""
    blocks = _blocks(values)
    scales = np.abs(blocks).max(axis=1) / levels
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    codes = np.rint(blocks / safe[:, None]).clip(-levels, levels).astype(np.int8)
    return codes, scales.astype(np.float32)


def _dequantize(codes: np.ndarray, scales: np.ndarray, size: int) -> np.ndarray:
    return (codes.reshape(-1, BLOCK).astype(np.float32) * scales[:, None]).reshape(-1)[:size]


def _to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """fp32 -> bfloat16 bit patterns (uint16), rounded to nearest even (NumPy has no bfloat16 type)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))
    return ((bits + rounding) >> 16).astype(np.uint16)


def _from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode_array(encoding: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """One fp32 array -> the arrays that carry it, keyed by name suffix ("" and, if quantized, SCALE)."""
    if encoding == FP32:
        return {"": np.asarray(values, dtype=np.float32)}
    if encoding == BF16:
        return {"": _to_bf16_bits(values)}
    if encoding == INT8_DELTA:
        codes, scales = _quantize(values, 127)
        return {"": codes.reshape(-1), SCALE: scales}
    if encoding == INT4_DELTA:
        codes, scales = _quantize(values, 7)
        nibbles = (codes.reshape(-1, 2) + 8).astype(np.uint8)  # 1..15; BLOCK is even, so pairs never straddle
        return {"": nibbles[:, 0] | (nibbles[:, 1] << 4), SCALE: scales}
    raise ValueError(f"unknown update encoding {encoding!r}")


def decode_array(encoding: str, parts: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of encode_array: fp32 values of `shape` (quantized encodings: up to their rounding)."""
    size = int(np.prod(shape, dtype=np.int64))
    if encoding == FP32:
        return np.asarray(parts[""], dtype=np.float32).reshape(shape)
    if encoding == BF16:
        return _from_bf16_bits(parts[""]).reshape(shape)
    if encoding == INT8_DELTA:
        return _dequantize(parts[""], parts[SCALE], size).reshape(shape)
    if encoding == INT4_DELTA:
        packed = parts[""]
        codes = np.stack([packed & 0x0F, packed >> 4], axis=1).astype(np.int8) - 8
        return _dequantize(codes, parts[SCALE], size).reshape(shape)
    raise ValueError(f"unknown update encoding {encoding!r}")


def wire_layout(encoding: str, layout: Layout) -> Layout:
    """What an update of arrays `layout` looks like on the wire: the server screens replies against it before
    decoding anything."""
    wire: Layout = {}
    for name, (shape, _dtype) in layout.items():
        blocks = -(-int(np.prod(shape, dtype=np.int64)) // BLOCK)
        if encoding == FP32:
            wire[name] = (shape, "float32")
        elif encoding == BF16:
            wire[name] = (shape, "uint16")
        elif encoding == INT8_DELTA:
            wire[name], wire[name + SCALE] = ((blocks * BLOCK,), "int8"), ((blocks,), "float32")
        elif encoding == INT4_DELTA:
            wire[name], wire[name + SCALE] = ((blocks * BLOCK // 2,), "uint8"), ((blocks,), "float32")
        else:
            raise ValueError(f"unknown update encoding {encoding!r}")
    return wire


# --- a whole set of weights ----------------------------------------------------------------------------------------

def encode_parts(encoding: str, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Named fp32 arrays -> the wire arrays that carry them (a quantized array's scales as name + SCALE)."""
    return {name + suffix: part for name, array in values.items()
            for suffix, part in encode_array(encoding, array).items()}


def decode_parts(encoding: str, wire: Mapping[str, np.ndarray], layout: Layout) -> Iterator[tuple[str, np.ndarray]]:
    """(name, fp32 values) for each array of `layout`, from its wire arrays, one at a time: the caller holds one
    decoded array at once (fp32: the wire array itself)."""
    for name, (shape, _dtype) in layout.items():
        parts = {"": wire[name]}
        if name + SCALE in wire:
            parts[SCALE] = wire[name + SCALE]
        yield name, decode_array(encoding, parts, shape)


def layout_of(values: Mapping[str, np.ndarray]) -> Layout:
    return {name: (tuple(a.shape), str(a.dtype)) for name, a in values.items()}


def is_delta(encoding: str) -> bool:
    return encoding != FP32
