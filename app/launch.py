"""Starting and stopping a real Flower deployment on this machine: one `flower-superlink`, N SuperNodes (each
through `fedvla node`, the operator's own entry point) and `flwr run` to submit the app. Used by `fedvla demo`
and the integration tests. Every process runs in its own session, so stopping it stops its children too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from app.telemetry import get_logger

log = get_logger(__name__)
CONNECTION = "fedvla-local"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value) -> str:
    """A value as TOML (what `--node-config` and `--run-config` parse): strings quoted, numbers and bools bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def config_arg(values: dict) -> str:
    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())


def _bin(name: str) -> str:
    """Flower's console scripts live beside this interpreter (the project's virtual environment)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Deployment:
    """A SuperLink and its SuperNodes on 127.0.0.1, with their state and logs under `workdir`."""

    workdir: Path
    fleet_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The SuperLink spawns flower-superexec (and that, the ServerApp) from PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(self.workdir / "flwr-home")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, args: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed when the process is reaped
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}, cwd=cwd,
                                   start_new_session=True)
        out.close()
        self.processes[name] = process
        log.info("process_started", name=name, pid=process.pid)
        return process

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def write_connection(self) -> None:
        home = self.workdir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.control_port}"\ninsecure = true\n'
        )

    def start_superlink(self, cwd: Path, timeout: float = 60) -> None:
        self.write_connection()
        self._spawn("superlink", [
            _bin("flower-superlink"), "--insecure",
            "--database", str(self.workdir / "state.db"),
            "--disable-runtime-dependency-installation",  # the app's dependencies are this environment's
            "--fleet-api-address", f"127.0.0.1:{self.fleet_port}",
            "--host", "127.0.0.1", "--port", str(self.control_port),
        ], cwd=cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.control_port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the SuperLink did not answer on 127.0.0.1:{self.control_port}:\n{self.log_tail('superlink')}")

    def start_supernode(self, name: str, dataset_uri: str, model: str, fps: int = 30, threads: int | None = None,
                        cameras: str = "auto", camera_map: str | None = None) -> None:
        """Start `fedvla node` (its warm worker checks the dataset, then flower-supernode starts beside it).
        `threads` caps each node's CPU threads: nodes sharing one machine would otherwise oversubscribe its cores
        and all run slower."""
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else None
        self._spawn(name, [
            sys.executable, "-m", "app.cli", "node",
            "--superlink", f"127.0.0.1:{self.fleet_port}", "--insecure",
            "--dataset-uri", dataset_uri, "--model", model, "--fps", str(fps), "--name", name,
            "--cameras", cameras, "--camera-map", camera_map,
            "--clientappio-port", str(free_port()),
        ], env=env)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}:\n{self.log_tail(name)}")

    def flwr(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([_bin("flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def submit(self, app_dir: Path, run_config: dict) -> int:
        result = self.flwr("run", str(app_dir), CONNECTION, "--run-config", config_arg(run_config), "--format", "json",
                           timeout=300)
        try:
            return int(json.loads(result.stdout)["run-id"])
        except (ValueError, KeyError) as exc:
            raise RuntimeError(f"flwr run failed ({result.returncode}): {result.stdout}{result.stderr}") from exc

    def run_status(self, run_id: int) -> str:
        result = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json", timeout=60)
        try:
            runs = json.loads(result.stdout)["runs"]
            return str(runs[0]["status"])
        except (ValueError, KeyError, IndexError):
            return "unknown"

    def wait(self, run_id: int, on_poll=None, ended=None, poll_seconds: float = 1.0, ask_every: float = 30.0) -> str:
        """Wait until the run ends; returns Flower's final status (e.g. finished:completed).

        Each `flwr ls` starts a Python process that imports Flower, about a second of CPU: asked every 3 s it took
        a third of a core from the nodes it waits for. So it is asked every `ask_every` seconds (a ServerApp that
        died without a word), and every poll once `ended()` says the ServerApp has finished."""
        asked = time.monotonic()
        while True:
            self.check_alive()
            if on_poll is not None:
                on_poll()
            if (ended is not None and ended()) or time.monotonic() - asked > ask_every:
                status = self.run_status(run_id)
                asked = time.monotonic()
                if status.startswith("finished"):
                    return status
            time.sleep(poll_seconds)

    def stop(self, grace: float = 10.0) -> None:
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + grace
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.info("process_stopped", name=name, code=process.returncode)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
