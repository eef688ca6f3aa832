"""app.common.metrics: the figures a round leaves in Prometheus, through prometheus_client's multiprocess mode as the
exporter reads them, and the README's metrics reference naming every one."""

import re
import subprocess
import sys
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.common import metrics
from app.ops.exporter import build_registry

REPO = Path(__file__).resolve().parents[2]

SUMMARY = {
    "round": 2, "wall-seconds": 12.5, "train-loss": 0.8, "server-eval-loss": 1.7, "bytes-sent": 6000,
    "bytes-received": 2000,
    "nodes": {"a": {"samples": 480, "bytes-sent": 1000}, "b": {"samples": 480, "bytes-sent": 1000}},
    "dropped": ["train node 3: reply has no positive num-examples"],
}
TRAIN_REPLY = {"train-loss": 0.9, "steps": 60, "num-examples": 480, "compute-seconds": 4.0,
               "bytes-sent": 1000, "bytes-received": 1000}


def test_server_round_sets_every_round_metric():
    metrics.record_server_start(901, planned=3, initial_eval_loss=2.5, first_round=1, checkpoint_interval=2)
    metrics.record_server_round(901, SUMMARY, planned=3, sampled=3)
    metrics.record_checkpoint(901, 2, 0.25)
    value = lambda name, **labels: REGISTRY.get_sample_value(name, {"run_id": "901", **labels})  # noqa: E731
    assert value("fedvla_server_round") == 2
    assert value("fedvla_server_rounds_planned") == 3
    assert value("fedvla_server_eval_loss") == 1.7
    assert value("fedvla_server_train_loss") == 0.8
    assert value("fedvla_server_round_duration_seconds_count") == 1
    assert value("fedvla_server_round_duration_seconds_sum") == 12.5
    assert [value("fedvla_server_round_nodes", state=s) for s in ("sampled", "replied", "dropped")] == [3, 2, 1]
    assert value("fedvla_server_sent_bytes_total") == 6000
    assert value("fedvla_server_received_bytes_total") == 2000
    assert value("fedvla_server_last_checkpoint_round") == 2
    assert value("fedvla_server_checkpoint_save_seconds") == 0.25


def test_node_train_rates_come_from_the_reply():
    metrics.record_node_train(902, "alice", 1, TRAIN_REPLY)
    value = lambda name: REGISTRY.get_sample_value(name, {"run_id": "902", "node": "alice"})  # noqa: E731
    assert value("fedvla_node_train_steps_per_second") == 15
    assert value("fedvla_node_train_samples_per_second") == 120
    assert value("fedvla_node_train_seconds_total") == 4
    assert value("fedvla_node_round") == 1


RECORD_IN_A_CHILD = """
from app.common import metrics
metrics.record_worker_start("alice", episodes=16, frames=640)
metrics.record_node_train(7, "alice", {round}, {{"train-loss": {loss}, "steps": 10, "num-examples": 80,
                          "compute-seconds": 2.0, "bytes-sent": 100, "bytes-received": 100}})
"""


def test_ended_processes_figures_reach_the_exporter(tmp_path):
    """Two ClientApp-like processes (or a worker and its restart) record and exit; the exporter's registry sums their counters and keeps the
    latest gauge, as Flower's one-process-per-message nodes need."""
    for server_round, loss in ((1, 0.9), (2, 0.7)):
        subprocess.run([sys.executable, "-c", RECORD_IN_A_CHILD.format(round=server_round, loss=loss)], check=True,
                       cwd=REPO, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    registry = build_registry(str(tmp_path), node="alice")
    labels = {"run_id": "7", "node": "alice"}
    assert registry.get_sample_value("fedvla_node_train_loss", labels) == 0.7
    assert registry.get_sample_value("fedvla_node_round", labels) == 2
    assert registry.get_sample_value("fedvla_node_sent_bytes_total", labels) == 200
    assert registry.get_sample_value("fedvla_node_train_seconds_total", labels) == 4
    assert registry.get_sample_value("fedvla_node_dataset_episodes", {"node": "alice"}) == 16
    assert registry.get_sample_value("fedvla_node_dataset_frames", {"node": "alice"}) == 640
    assert registry.get_sample_value("fedvla_node_worker_starts_total", {"node": "alice"}) == 2  # one restart
    assert registry.get_sample_value("fedvla_gpus", {"node": "alice"}) is not None
    assert registry.get_sample_value("fedvla_process_resident_memory_bytes", {"node": "alice"}) > 0


def exported_metric_names(tmp_path) -> set[str]:
    metrics.record_node_eval(903, "bob", 1.0, 10)
    names = {f.name for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611

    from app.ops.flower_nodes import FlowerNodesCollector

    flower_nodes = FlowerNodesCollector(lambda: [NodeInfo(node_id=1, owner_name="op", status="online")])
    flower_nodes.poll()  # what the SuperLink's exporter adds
    exporter = build_registry(str(tmp_path), node="bob", extra=[flower_nodes])
    names |= {f.name for f in text_string_to_metric_families(generate_latest(exporter).decode())}
    names |= {"fedvla_gpu_utilization_ratio", "fedvla_gpu_memory_used_bytes", "fedvla_gpu_memory_total_bytes",
              "fedvla_gpu_power_watts", "fedvla_gpu_temperature_celsius"}  # only where NVML sees a GPU
    return {n for n in names if n.startswith("fedvla_")}


def test_every_metric_follows_the_conventions(tmp_path):
    for name in exported_metric_names(tmp_path):
        assert re.fullmatch(r"fedvla_[a-z0-9_]+", name), name
        assert not name.endswith("_total"), name  # the family name; samples of counters add _total


def test_the_readme_lists_every_metric(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Metrics reference", 1)[1].split("\n## ", 1)[0]
    listed = {m.removesuffix("_total") for m in re.findall(r"`(fedvla_[a-z0-9_]+)`", section)}
    assert exported_metric_names(tmp_path) == listed
