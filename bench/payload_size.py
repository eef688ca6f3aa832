"""What one round moves per node with the real SmolVLA architecture (lerobot/smolvla_base's shapes, random
weights built offline): trainable parameters and bytes with LeRobot's default freezing, the size of the Flower
ArrayRecord that carries them, and how long packing and unpacking it takes; then, for each update encoding
(app.federation.codec), the serialized Flower message content each way in a round after the first (a delta against the
weights the node holds; round 1 sends full fp32 weights down whatever the encoding), against the full fp32 state
dict. Target: at most 1/16 of it each way; stretch 1/32. And the objects each message is made of in Flower's object
store, each one request, in either wire layout (`wire-layout`): target at most 5 beyond the update's chunks.

    python -m bench.payload_size         -> bench/results/payload_size.json
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console

from app.learning.embedded.backbone import SMOLVLM2_500M, write_tiny_backbone
from app.common.telemetry import configure_logging
from bench.common import figure, peak_rss_mib, save

TARGET, STRETCH = 16, 32  # full fp32 state dict / message bytes, each way


def message_bytes(content) -> int:
    """What Flower puts on the wire for a message's content: its serialized protobuf."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(content).ByteSize()


def message_objects(content) -> dict:
    """The objects of Flower's object store a message of `content` is made of (the ServerApp pushes or pulls each
    with one request to the SuperLink; a SuperNode, each with one Fleet API call), and how many are array chunks."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    objects = get_all_nested_objects(content).values()  # the content's; the Message holding it is one more
    return {"objects": 1 + len(objects), "chunks": sum(type(o).__name__ == "ArrayChunk" for o in objects)}


def objects_by_layout(content, reply: bool = False) -> dict:
    """message_objects of `content` with its arrays in each wire layout (a reply, as the ClientApp sends it: packed,
    its other records ride in the update's header)."""
    from flwr.app import RecordDict

    from app.federation import wire
    parts = wire.unpack(content["arrays"])
    sent = wire.pack_records if reply else (lambda packed: packed)
    return {layout: message_objects(sent(RecordDict({**content, "arrays": wire.pack(parts, layout)})))
            for layout in wire.WIRE_LAYOUTS}


def encoding_sizes(trainable: dict, full_state_dict_bytes: int) -> tuple[dict, list[dict]]:
    """Each encoding's round-2 messages, down (server -> node) and up (node -> server), on `trainable` weights."""
    import numpy as np
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from app.federation import codec, wire
    weights = {name: tensor.numpy() for name, tensor in trainable.items()}
    rng = np.random.default_rng(0)
    sizes, figures = {}, []
    for encoding in codec.ENCODINGS:
        server, node = wire.Broadcast(encoding), wire.NodeCodec(RecordDict())
        first, _ = server.send(weights, 0, [1])
        held = node.receive(first[1])
        server.received(1)
        moved = {k: v + 1e-3 * rng.standard_normal(v.shape, dtype=np.float32) for k, v in weights.items()}
        started = time.perf_counter()
        second, _ = server.send(moved, 1, [1])
        encode_seconds = time.perf_counter() - started
        down = message_bytes(second[1])
        held = node.receive(second[1])
        reply = RecordDict({"arrays": node.send(encoding, {k: v + 1e-3 for k, v in held.items()}, held),
                            "metrics": MetricRecord({"num-examples": 1}), "node": ConfigRecord({"node-name": "a"})})
        up = message_bytes(reply)
        sizes[encoding] = {"down_bytes": down, "up_bytes": up, "first_round_down_bytes": message_bytes(first[1]),
                           "server_encode_seconds": round(encode_seconds, 2),
                           "down_objects": objects_by_layout(second[1]), "up_objects": objects_by_layout(reply, reply=True)}
        packed_up = sizes[encoding]["up_objects"]["packed"]
        figures.append(figure(f"{encoding} up: objects (requests) per reply, packed, beyond its chunks", 5,
                              packed_up["objects"] - packed_up["chunks"], "objects",
                              note="Message, RecordDict, its one ArrayRecord and the update's Array; "
                                   f"per-array: {sizes[encoding]['up_objects']['per-array']['objects']} objects"))
        for direction, size in (("down", down), ("up", up)):
            ratio = full_state_dict_bytes / size
            metric = f"{encoding} {direction}: full fp32 state dict / message bytes, round 2 onward"
            figures.append(figure(metric, TARGET, ratio, "x", higher_is_better=True))
            figures.append(figure(metric + " (stretch)", STRETCH, ratio, "x", higher_is_better=True))
        del first, second, reply, held, moved
    return sizes, figures


def main() -> None:
    import torch
    from flwr.app import ArrayRecord
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from app.learning import model
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
    round_trip_exact = all(torch.equal(unpacked[k], v) for k, v in trainable.items())
    arrayrecord_bytes = sum(len(a.data) for a in record.values())
    started = time.perf_counter()
    fingerprint = model.frozen_fingerprint(policy)
    fingerprint_seconds = time.perf_counter() - started
    total = sum(p.numel() for p in policy.parameters())
    full_bytes = sum(t.numel() * t.element_size() for t in policy.state_dict().values())
    del record, unpacked
    sizes, figures = encoding_sizes(trainable, full_bytes)
    path = save("payload_size", {
        "architecture": "SmolVLA on SmolVLM2-500M shapes (smolvla_base defaults: num_vlm_layers=16, expert x0.75)",
        "parameters": total,
        "trainable_parameters": sum(t.numel() for t in trainable.values()),
        "trainable_arrays": len(trainable),
        "trainable_bytes_fp32": sum(t.numel() * t.element_size() for t in trainable.values()),
        "arrayrecord_bytes": arrayrecord_bytes,
        "full_state_dict_bytes_fp32": full_bytes,
        "build_seconds": build_seconds,
        "arrayrecord_pack_seconds": pack_seconds,
        "arrayrecord_unpack_seconds": unpack_seconds,
        "frozen_fingerprint_seconds": fingerprint_seconds,
        "round_trip_exact": round_trip_exact,
        "encodings": sizes,
        "figures": figures,
        "fingerprint": fingerprint,
        "peak_rss_mib": peak_rss_mib(),
    })
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
