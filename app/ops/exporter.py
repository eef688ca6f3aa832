"""The Prometheus exporter each container runs: it starts the container's Flower process (flower-superlink,
flower-superexec or flower-supernode) as its child, serves /metrics, and exits with the child's exit code.

/metrics holds
  - what the Flower process's short-lived ServerApp/ClientApp processes recorded (app.common.metrics), merged from the
    multiprocess directory this exporter hands them in PROMETHEUS_MULTIPROC_DIR;
  - the GPUs of this machine through NVML: utilization, memory, power, temperature (zero GPUs where there are
    none, or no NVIDIA driver);
  - CPU time and resident memory of the whole process tree: the Flower process and everything it started;
  - beside a SuperLink (`--flower-control`), every SuperNode of Flower's node list, online or not
    (app.ops.flower_nodes);
It imports neither torch nor LeRobot: the SuperLink image has neither, and a scrape answers in milliseconds.

    python -m app.ops.exporter --port 9400 --role supernode --node alice -- flower-supernode ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from app.common.telemetry import configure_logging, get_logger

log = get_logger(__name__)


class GpuCollector:
    """NVIDIA GPUs through NVML (nvidia-ml-py), read at each scrape."""

    def __init__(self, labels: dict[str, str]):
        self.labels = labels
        self.handles: list = []
        self.why_none = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # no library, no driver, no device: a CPU machine has zero GPUs, not an error
            self.why_none = f"{type(exc).__name__}: {exc}"
        log.info("gpus_found", count=len(self.handles), why_none=self.why_none or None)

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        count = GaugeMetricFamily("fedvla_gpus", "NVIDIA GPUs visible to this container", labels=list(self.labels))
        count.add_metric(list(self.labels.values()), len(self.handles))
        yield count
        if self.handles:
            yield from self._per_gpu()

    def _per_gpu(self) -> Iterator:
        import pynvml
        from prometheus_client.core import GaugeMetricFamily

        names = [*self.labels, "gpu", "name"]
        families = {
            "util": GaugeMetricFamily("fedvla_gpu_utilization_ratio", "GPU busy share over the last sample period",
                                      labels=names),
            "used": GaugeMetricFamily("fedvla_gpu_memory_used_bytes", "GPU memory in use", labels=names),
            "total": GaugeMetricFamily("fedvla_gpu_memory_total_bytes", "GPU memory in all", labels=names),
            "power": GaugeMetricFamily("fedvla_gpu_power_watts", "GPU power draw", labels=names),
            "temp": GaugeMetricFamily("fedvla_gpu_temperature_celsius", "GPU core temperature", labels=names),
        }
        for index, handle in enumerate(self.handles):
            try:
                name = pynvml.nvmlDeviceGetName(handle)
                values = [*self.labels.values(), str(index), name if isinstance(name, str) else name.decode()]
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                families["util"].add_metric(values, pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
                families["used"].add_metric(values, memory.used)
                families["total"].add_metric(values, memory.total)
                families["power"].add_metric(values, pynvml.nvmlDeviceGetPowerUsage(handle) / 1000)
                families["temp"].add_metric(values, pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
            except pynvml.NVMLError as exc:  # a GPU that fell off the bus: skip it this scrape, say so
                log.warning("gpu_read_failed", gpu=index, error=str(exc))
        yield from families.values()


class ProcessTreeCollector:
    """CPU seconds and resident memory of this process and all its descendants (the Flower process and the
    ServerApp/ClientApp processes it starts). CPU time of ended processes stays counted through their parents'
    children times, so the counter only resets when the exporter restarts."""

    def __init__(self, labels: dict[str, str]):
        import psutil

        self.labels = labels
        self.root = psutil.Process()

    def collect(self) -> Iterator:
        import psutil
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cpu = rss = 0.0
        count = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    cpu += times.user + times.system + times.children_user + times.children_system
                    rss += process.memory_info().rss
                    count += 1
            except psutil.Error:  # ended between listing and reading
                continue
        values = list(self.labels.values())
        families = (
            (CounterMetricFamily, "fedvla_process_cpu_seconds", "CPU time of the container's process tree", cpu),
            (GaugeMetricFamily, "fedvla_process_resident_memory_bytes", "Resident memory of the process tree", rss),
            (GaugeMetricFamily, "fedvla_processes", "Processes in the tree (exporter, Flower, apps)", count),
        )
        for kind, name, documentation, value in families:
            family = kind(name, documentation, labels=list(self.labels))
            family.add_metric(values, value)
            yield family


def build_registry(multiprocess_dir: str, node: str | None = None, extra: Sequence = ()):
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    labels = {"node": node} if node else {}
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiprocess_dir)
    registry.register(GpuCollector(labels))
    registry.register(ProcessTreeCollector(labels))
    for collector in extra:
        registry.register(collector)
    return registry


@contextmanager
def metrics_endpoint(port: int, address: str = "0.0.0.0", node: str | None = None,
                     role: str = "", extra: Sequence = ()) -> Iterator[dict[str, str]]:
    """Serve /metrics on address:port for as long as the block runs; yields the environment the processes it
    watches must get (their PROMETHEUS_MULTIPROC_DIR)."""
    from prometheus_client import start_http_server

    multiprocess_dir = tempfile.mkdtemp(prefix="fedvla-metrics-")  # fresh: no values of an earlier life
    try:
        registry = build_registry(multiprocess_dir, node, extra)
        server, _ = start_http_server(port, addr=address, registry=registry)
        log.info("exporter_listening", role=role, address=f"{address}:{port}", node=node)
        try:
            yield {**os.environ, "PROMETHEUS_MULTIPROC_DIR": multiprocess_dir}
        finally:
            server.shutdown()
    finally:
        shutil.rmtree(multiprocess_dir, ignore_errors=True)


def supervise(command: Sequence[str], port: int, address: str = "0.0.0.0", node: str | None = None,
              role: str = "", extra: Sequence = ()) -> int:
    """Serve /metrics on address:port while `command` runs; forward SIGTERM/SIGINT to it; return its exit code."""
    from app.node import supervisor

    with metrics_endpoint(port, address, node, role, extra) as env:
        return supervisor.run(command, env, role=role)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.ops.exporter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--role", default="", help="what the command is (superlink, serverapp), for logs")
    parser.add_argument("--node", help="the node name to label node-level metrics with")
    parser.add_argument("--flower-control", metavar="HOST:PORT",
                        help="the SuperLink's Control API: report every SuperNode of its node list")
    parser.add_argument("--flower-root-certificates", help="the CA certificate the Control API's TLS is signed by")
    parser.add_argument("--flower-insecure", action="store_true", help="the Control API speaks plain HTTP")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    configure_logging()
    extra = []
    if args.flower_control:
        from app.ops.flower_nodes import FlowerNodesCollector, control_api_lister

        lister = control_api_lister(args.flower_control, args.flower_root_certificates, args.flower_insecure)
        extra.append(FlowerNodesCollector(lister).start())
    return supervise(command, args.port, args.address, args.node, role=args.role, extra=extra)


if __name__ == "__main__":
    sys.exit(main())
