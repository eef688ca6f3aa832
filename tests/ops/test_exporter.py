"""app.ops.exporter: the process each container runs around its Flower process. Real child processes and a real
HTTP scrape on 127.0.0.1; NVML is faked only where this machine has no GPU to read."""

import signal
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.ops.exporter import GpuCollector, main
from app.ops.launch import free_port

REPO = Path(__file__).resolve().parents[2]


def scrape(port: int, timeout: float = 30) -> dict[str, list]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                text = response.read().decode()
            return {f.name: f.samples for f in text_string_to_metric_families(text)}
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_exporter(port: int, child_code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.ops.exporter", "--port", str(port), "--address", "127.0.0.1", "--node", "alice",
         "--", sys.executable, "-c", child_code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def test_serves_what_its_child_records_and_exits_with_its_code(tmp_path):
    port = free_port()
    done = tmp_path / "done"
    child = (
        "import time, pathlib\n"
        "from app.common import metrics\n"
        "metrics.record_checkpoint(5, 3, 0.5)\n"
        f"pathlib.Path({str(done)!r}).touch()\n"
        f"while not pathlib.Path({str(done)!r} + '.read').exists(): time.sleep(0.1)\n"
        "raise SystemExit(3)\n"
    )
    exporter = start_exporter(port, child)
    try:
        while not done.exists():
            assert exporter.poll() is None, exporter.stdout.read().decode()
            time.sleep(0.1)
        families = scrape(port)
        assert families["fedvla_server_last_checkpoint_round"][0].value == 3
        assert families["fedvla_gpus"][0].labels == {"node": "alice"}
        assert families["fedvla_processes"][0].value >= 2  # the exporter and its child
        assert families["fedvla_process_cpu_seconds"][0].value > 0
        (tmp_path / "done.read").touch()
        assert exporter.wait(timeout=30) == 3
    finally:
        exporter.kill()


def test_forwards_sigterm_to_its_child():
    port = free_port()
    exporter = start_exporter(port, "import time\nwhile True: time.sleep(1)")
    try:
        scrape(port)
        exporter.send_signal(signal.SIGTERM)
        assert exporter.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        exporter.kill()


def test_refuses_to_start_without_a_command(capsys):
    try:
        main(["--port", "1"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "give the command to run after --" in capsys.readouterr().err


class FakeNvml(types.ModuleType):
    """Two GPUs as nvidia-ml-py reports them: bytes, milliwatts, percent."""

    NVML_TEMPERATURE_GPU = 0
    NVMLError = RuntimeError

    def __init__(self):
        super().__init__("pynvml")

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=50 + handle)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 300_000

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 60


def test_gpu_collector_reports_each_gpu_in_base_units(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    families = {f.name: f.samples for f in GpuCollector({"node": "alice"}).collect()}
    assert families["fedvla_gpus"][0].value == 2
    util = {s.labels["gpu"]: s.value for s in families["fedvla_gpu_utilization_ratio"]}
    assert util == {"0": 0.5, "1": 0.51}
    assert families["fedvla_gpu_memory_used_bytes"][1].value == 2 * 2**30
    assert families["fedvla_gpu_power_watts"][0].value == 300
    assert families["fedvla_gpu_temperature_celsius"][0].labels == {"node": "alice", "gpu": "0", "name": "NVIDIA H100 80GB HBM3"}


def test_a_machine_without_nvml_has_zero_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as where nvidia-ml-py or the driver is missing
    collector = GpuCollector({})
    families = {f.name: f.samples for f in collector.collect()}
    assert families == {"fedvla_gpus": [families["fedvla_gpus"][0]]} and families["fedvla_gpus"][0].value == 0
    assert collector.why_none
