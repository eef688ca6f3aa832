"""What one round moves per node with the real SmolVLA architecture (lerobot/smolvla_base's shapes, random
weights built offline): trainable parameters and bytes with LeRobot's default freezing, the size of the Flower
ArrayRecord that carries them, and how long packing and unpacking it takes.

    python -m bench.payload_size         -> bench/results/payload_size.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console

from app.embedded.backbone import SMOLVLM2_500M, write_tiny_backbone
from app.telemetry import configure_logging
from bench.common import peak_rss_mib, save


def main() -> None:
    import torch
    from flwr.app import ArrayRecord
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from app import model

    configure_logging("WARNING")
    backbone = write_tiny_backbone(Path(tempfile.mkdtemp()) / "smolvlm2-500m-shapes", SMOLVLM2_500M)
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(6,))}
    for camera in ("front", "wrist", "top"):
        inputs[f"observation.images.{camera}"] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 256, 256))
    config = SmolVLAConfig(  # smolvla_base's settings; only the weights are random
        vlm_model_name=str(backbone), load_vlm_weights=False, input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(6,))}, device="cpu",
    )
    started = time.perf_counter()
    policy = SmolVLAPolicy(config)
    build_seconds = time.perf_counter() - started
    trainable = model.trainable_state(policy)
    started = time.perf_counter()
    record = ArrayRecord(trainable)
    pack_seconds = time.perf_counter() - started
    started = time.perf_counter()
    unpacked = record.to_torch_state_dict()
    unpack_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fingerprint = model.frozen_fingerprint(policy)
    fingerprint_seconds = time.perf_counter() - started
    total = sum(p.numel() for p in policy.parameters())
    path = save("payload_size", {
        "architecture": "SmolVLA on SmolVLM2-500M shapes (smolvla_base defaults: num_vlm_layers=16, expert x0.75)",
        "parameters": total,
        "trainable_parameters": sum(t.numel() for t in trainable.values()),
        "trainable_arrays": len(trainable),
        "trainable_bytes_fp32": sum(t.numel() * t.element_size() for t in trainable.values()),
        "arrayrecord_bytes": sum(len(a.data) for a in record.values()),
        "full_state_dict_bytes_fp32": sum(t.numel() * t.element_size() for t in policy.state_dict().values()),
        "build_seconds": build_seconds,
        "arrayrecord_pack_seconds": pack_seconds,
        "arrayrecord_unpack_seconds": unpack_seconds,
        "frozen_fingerprint_seconds": fingerprint_seconds,
        "round_trip_exact": all(torch.equal(unpacked[k], v) for k, v in trainable.items()),
        "fingerprint": fingerprint,
        "peak_rss_mib": peak_rss_mib(),
    })
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
