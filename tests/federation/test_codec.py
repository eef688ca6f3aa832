"""app.federation.codec: the update encodings' arithmetic (fp32 values <-> wire arrays), with no Flower in sight."""

import numpy as np
import pytest

from app.federation import codec
from app.federation.codec import BLOCK, ENCODINGS, FP32

RNG = np.random.default_rng(0)
WEIGHTS = {"expert.w": RNG.normal(size=(300, 7)).astype(np.float32), "expert.b": RNG.normal(size=(5,)).astype(np.float32)}
# Worst error of one value: half a quantization step of its block (bf16: 8 bits of mantissa).
RELATIVE_STEP = {"bf16": 2.0**-8, "int8-delta": 0.5 / 127, "int4-delta": 0.5 / 7}


def round_trip(encoding: str, values: dict) -> dict:
    return dict(codec.decode_parts(encoding, codec.encode_parts(encoding, values), codec.layout_of(values)))


def test_fp32_round_trip_is_exact():
    decoded = round_trip(FP32, WEIGHTS)
    assert all(np.array_equal(decoded[k], WEIGHTS[k]) for k in WEIGHTS)


@pytest.mark.parametrize("encoding", ["bf16", "int8-delta", "int4-delta"])
def test_quantized_round_trip_is_within_half_a_step(encoding):
    decoded = round_trip(encoding, WEIGHTS)
    for name, values in WEIGHTS.items():
        assert decoded[name].shape == values.shape and decoded[name].dtype == np.float32
        bound = np.abs(values).max() * RELATIVE_STEP[encoding] * 1.0001
        assert np.abs(decoded[name] - values).max() <= bound


def test_int8_is_a_quarter_and_int4_an_eighth_of_fp32_plus_scales():
    big = {"w": np.ones(BLOCK * 1000, dtype=np.float32)}
    size = {e: sum(a.nbytes for a in codec.encode_parts(e, big).values()) for e in ENCODINGS}
    scales = 1000 * 4
    assert size == {"fp32": 4 * BLOCK * 1000, "bf16": 2 * BLOCK * 1000, "int8-delta": BLOCK * 1000 + scales,
                    "int4-delta": BLOCK * 1000 // 2 + scales}


def test_a_zero_block_stays_zero():
    zeros = {"w": np.zeros(3 * BLOCK, dtype=np.float32)}
    assert not round_trip("int8-delta", zeros)["w"].any()


def test_the_arithmetic_imports_no_flower():
    import subprocess
    import sys

    listing = "import sys, app.federation.codec; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", listing], check=True, capture_output=True, text=True).stdout
    assert "'flwr'" not in loaded and "'numpy'" in loaded
