"""One real deployment shared by the tests that need a running federation of warm SuperNodes, started once per
session (per pytest-xdist worker) instead of once per module: each start costs two workers importing torch and
LeRobot and a SuperLink, half a minute on two cores.

It is what an owner runs: flower-superlink with TLS and SuperNode authentication, and `fedvla node` x 2 on the
embedded operator datasets, each with its key registered. Every process gets fresh stand-ins of the secrets an
operator or coordinator holds (HF_TOKEN, WANDB_API_KEY), a Hub on 127.0.0.1 (HF_ENDPOINT) for the push, one
Prometheus multiprocess directory and the directory where tests/reliability/recording_client_app.py writes the
replies it records, so the secret and data-stays-home scans read everything such a deployment writes.

The tests share it through `scenario`:
- a scenario starts only on a whole deployment: the SuperLink and every SuperNode running and connected, or it
  fails at once naming the scenario before it. A scenario that kills a process brings it back before it ends (the
  worker's supervisor restarts a killed worker, crash-resume restarts the SuperLink), except node loss: a node's
  restart would cost a worker start, so its module runs last (SHARED_DEPLOYMENT_ORDER in tests/conftest.py);
- a scenario reads the processes' logs from where it began (`Scenario.log`), never an earlier scenario's lines.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.learning import embedded
from app.common.config import RunConfig
from app.ops.demo import APP_DIR
from app.ops.launch import Deployment
from tests.fakes.hub import FakeHub
from tests.integration.conftest import NODES

CONNECTED = "superlink_connected"  # `fedvla node` logs it once its SuperNode reached the SuperLink


@dataclass
class Scenario:
    """One test's use of the shared deployment."""

    name: str
    deployment: Deployment
    offsets: dict[str, int]  # process name -> its log's size when the scenario began

    def log(self, process: str) -> str:
        """`process`'s log (SuperLink or a node: its `fedvla node`, worker and supervisor lines) since the scenario
        began."""
        with open(self.deployment.workdir / "logs" / f"{process}.log", "rb") as f:
            f.seek(self.offsets.get(process, 0))
            return f.read().decode(errors="replace")


@dataclass
class SharedDeployment:
    deployment: Deployment
    hub: FakeHub
    secrets: dict[str, str]  # name -> the fresh value every process of the deployment holds
    prometheus: Path  # PROMETHEUS_MULTIPROC_DIR of every process
    recorded_replies: Path  # where the recording ClientApp writes each reply it sends
    scenarios: list[str] = field(default_factory=list)  # the names of those begun so far

    @classmethod
    @contextlib.contextmanager
    def running(cls, workdir: Path) -> Iterator[SharedDeployment]:
        embedded.ensure_base_model()
        embedded.ensure_server_eval_dataset()
        prometheus, recorded = workdir / "prometheus", workdir / "recorded-replies"
        prometheus.mkdir(parents=True)
        recorded.mkdir()
        fresh = {"HF_TOKEN": "hf_" + secrets.token_hex(17), "WANDB_API_KEY": secrets.token_hex(20)}  # real shapes
        with FakeHub() as hub:
            environment = {**fresh, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
                           "PROMETHEUS_MULTIPROC_DIR": str(prometheus), "FEDVLA_RECORDED_REPLIES": str(recorded),
                           "WANDB_MODE": "offline"}
            with Deployment(workdir / "deployment", auth=True, environment=environment) as deployment:
                shared = cls(deployment, hub, fresh, prometheus, recorded)
                deployment.start_superlink(cwd=APP_DIR)
                for i, name in enumerate(NODES):
                    deployment.start_supernode(name, str(embedded.ensure_operator_dataset(i)), "embedded:tiny",
                                               threads=1, camera_map=RunConfig().camera_map)
                yield shared

    @contextlib.contextmanager
    def scenario(self, name: str, timeout: float = 300) -> Iterator[Scenario]:
        self._wait_until_whole(name, timeout)
        logs = self.deployment.workdir / "logs"
        offsets = {path.stem: path.stat().st_size for path in logs.glob("*.log")}
        self.scenarios.append(name)
        yield Scenario(name, self.deployment, offsets)

    def _wait_until_whole(self, name: str, timeout: float) -> None:
        after = f"after {self.scenarios[-1]!r}" if self.scenarios else "at its start"
        deadline = time.monotonic() + timeout
        for process_name in ["superlink", *NODES]:
            code = self.deployment.processes[process_name].poll()
            if code is not None:
                raise RuntimeError(f"scenario {name!r}: the shared deployment's {process_name} exited (code {code}) "
                                   f"{after}: a scenario that kills a process starts it again, or runs last "
                                   "(SHARED_DEPLOYMENT_ORDER in tests/conftest.py):\n"
                                   + self.deployment.log_tail(process_name))
        for node in NODES:
            log_file = self.deployment.workdir / "logs" / f"{node}.log"
            while CONNECTED not in log_file.read_text(errors="replace"):
                self.deployment.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"scenario {name!r}: {node} of the shared deployment did not connect within "
                                       f"{timeout:.0f} s {after}:\n" + self.deployment.log_tail(node))
                time.sleep(0.5)
