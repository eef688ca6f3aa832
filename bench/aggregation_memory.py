"""The ServerApp's memory while it aggregates a round, against the number of nodes.

For N = 2, 4, 8, 16, 32 nodes, a fresh process holds the global model (smolvla_base's trainable shapes: 99.9M
parameters, 400 MB fp32), sends a round with FedVLA and takes N replies one at a time as they would arrive,
each deserialized only when it "arrives", as Flower's grid hands replies over. Growth is the peak of memory
allocated during the round (Python and NumPy allocations, traced with tracemalloc) minus what was allocated before
the first reply; the process's resident memory, sampled every 10 ms, is recorded beside it (it also depends on
what the allocator kept from before the round). Streaming aggregation (what the ServerApp does) is measured for fp32 and int8-delta updates; holding
every reply and averaging them at the end (Flower's batch aggregation) for fp32 at N <= 8, for contrast.
Target: growth at most twice the trainable arrays' size, flat in N.

    python -m bench.aggregation_memory          -> bench/results/aggregation_memory.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from rich.console import Console

from bench.common import figure, save

NODES = (2, 4, 8, 16, 32)
BATCH_NODES = (2, 4, 8)  # holding 32 fp32 replies would take 13 GB
FLOOR_NOTE = ("a whole fp32 reply as Flower hands it over (1.000x) plus the running sum (1.000x) is the floor; "
              "above it: the reply's Python objects and the fold's 256 kB of scratch")


def smolvla_trainable_layout() -> dict[str, list[int]]:
    """Shapes of smolvla_base's trainable arrays (the model built offline with random weights, as payload_size)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from app.learning import model
    from app.learning.embedded.backbone import SMOLVLM2_500M, write_tiny_backbone

    backbone = write_tiny_backbone(Path(tempfile.mkdtemp()) / "smolvlm2-500m-shapes", SMOLVLM2_500M)
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(6,))}
    for camera in ("front", "wrist", "top"):
        inputs[f"observation.images.{camera}"] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 256, 256))
    config = SmolVLAConfig(vlm_model_name=str(backbone), load_vlm_weights=False, input_features=inputs,
                           output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(6,))},
                           device="cpu")
    return {name: list(t.shape) for name, t in model.trainable_state(SmolVLAPolicy(config)).items()}


class PeakRss:
    """Resident memory sampled in a thread: the peak since `reset`."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        threading.Thread(target=self._sample, daemon=True).start()

    def now(self) -> int:
        return self.process.memory_info().rss

    def reset(self) -> int:
        self.peak = self.now()
        return self.peak

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval)


def one_round(layout: dict[str, list[int]], nodes: int, encoding: str, streaming: bool) -> dict:
    """In a fresh process: the memory growth of aggregating one round of `nodes` replies."""
    import gc

    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
    from flwr.common.serde import ProtoRecordDict, recorddict_from_proto, recorddict_to_proto
    from flwr.supercore.task_identity import TaskIdentity

    from app.federation import wire
    from app.common.config import RunConfig
    from app.federation.strategy import FedVLA

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in layout.items()}
    global_arrays = ArrayRecord({name: Array(values) for name, values in weights.items()})
    run = RunConfig.from_mapping({"update-encoding": encoding, "min-train-nodes": 1, "min-available-nodes": 1})
    strategy = FedVLA(run, "bench", {}, global_arrays)

    class Grid:
        def get_node_ids(self):
            return list(range(1, nodes + 1))

    strategy.configure_train(1, global_arrays, ConfigRecord(), Grid())
    for node_id in range(1, nodes + 1):
        strategy.broadcast.received(node_id)
    # One update on the wire, built before the measurement (the nodes' work is not the server's memory); each
    # arrival is decoded from it afresh, as Flower's grid hands over replies it deserialized.
    trained = {k: v + np.float32(1e-3) for k, v in weights.items()}
    sent = recorddict_to_proto(RecordDict({"arrays": wire.NodeCodec(RecordDict()).send(encoding, trained, weights)})
                               ).SerializeToString()
    del trained

    def reply(node_id: int) -> Message:
        """What node `node_id` sends, as the ServerApp receives it."""
        content = recorddict_from_proto(ProtoRecordDict.FromString(sent))
        content["metrics"] = MetricRecord({"num-examples": 100 + node_id, "train-loss": 1.0})
        content["node"] = ConfigRecord({"node-name": f"node_{node_id}", "dataset": "bench"})
        return Message(content=content, metadata=Metadata(
            run_id=1, message_id="", src_node_id=node_id, dst_node_id=0, reply_to_message_id="m", group_id="1",
            created_at=time.time(), ttl=600, message_type="train"))

    gc.collect()
    rss = PeakRss()
    time.sleep(0.05)
    rss_before = rss.reset()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    if streaming:
        strategy.open_train_round(1)
        for node_id in range(1, nodes + 1):
            strategy.receive_train(reply(node_id))
        arrays, _ = strategy.close_train_round()
    else:
        arrays, _ = strategy.aggregate_train(1, [reply(n) for n in range(1, nodes + 1)])
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    time.sleep(0.05)
    trainable = sum(int(np.prod(shape)) * 4 for shape in layout.values())
    assert len(arrays) == len(layout)
    return {"nodes": nodes, "encoding": encoding, "streaming": streaming, "growth_bytes": peak - before,
            "growth_over_trainable": (peak - before) / trainable, "rss_growth_bytes": rss.peak - rss_before,
            "seconds": round(seconds, 1)}


def measure(layout_file: Path, nodes: int, encoding: str, streaming: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.aggregation_memory", "--child", str(layout_file), str(nodes), encoding,
         str(streaming)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from app.common.telemetry import configure_logging

    configure_logging("WARNING")
    layout = smolvla_trainable_layout()
    trainable = sum(_size(shape) * 4 for shape in layout.values())
    layout_file = Path(tempfile.mkdtemp()) / "layout.json"
    layout_file.write_text(json.dumps(layout))
    console = Console(stderr=True)
    rows = []
    for encoding, streaming, counts in (("fp32", True, NODES), ("int8-delta", True, NODES), ("fp32", False, BATCH_NODES)):
        for nodes in counts:
            rows.append(measure(layout_file, nodes, encoding, streaming))
            console.print(rows[-1])
    figures = []
    for encoding in ("fp32", "int8-delta"):
        growth = [r["growth_over_trainable"] for r in rows if r["encoding"] == encoding and r["streaming"]]
        figures.append(figure(f"streaming aggregation, {encoding} updates: peak memory growth over the trainable "
                              f"arrays' size, worst of N = {', '.join(map(str, NODES))}", 2.0, max(growth), "x",
                              note=FLOOR_NOTE if encoding == "fp32" else ""))
        figures.append(figure(f"streaming aggregation, {encoding} updates: growth at N=32 minus growth at N=2",
                              0.25, growth[-1] - growth[0], "x trainable size",
                              note="flat in N: within a quarter of the trainable size"))
    path = save("aggregation_memory", {
        "command": "python -m bench.aggregation_memory",
        "trainable_bytes_fp32": trainable, "trainable_arrays": len(layout), "rounds": rows, "figures": figures,
    })
    Console().print_json(path.read_text())


def _size(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        layout_path, nodes, encoding, streaming = sys.argv[2:6]
        result = one_round(json.loads(Path(layout_path).read_text()), int(nodes), encoding, streaming == "True")
        print(json.dumps(result))
    else:
        main()
