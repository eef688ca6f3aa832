"""Starting and stopping a real Flower deployment on this machine: one `flower-superlink`, N SuperNodes (each
through `fedvla node`, the operator's own entry point) and `flwr run` to submit the app. Used by `fedvla demo`
and the integration tests. Every process runs in its own session, so stopping it stops its children too.

The deployment is what a real one is: TLS on the Fleet and Control APIs with a CA and certificate made for it in
`workdir/certs` (plain gRPC only with `tls=False`), and with `auth=True` SuperNode authentication, each node's key
registered with `flwr supernode register` before it starts.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import ssl
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from app.common.telemetry import get_logger

log = get_logger(__name__)
CONNECTION = "fedvla-local"
NODE_RESTART_DELAY = 5.0
NODE_RESTARTS = 3


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
    tls: bool = True
    auth: bool = False  # SuperNode authentication (needs TLS)
    fleet_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    restart_nodes: bool = False
    environment: dict[str, str] = field(default_factory=dict)  # on top of this process's, for every process started
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)  # the SuperNodes' names among `processes`
    lost: dict[str, float] = field(default_factory=dict)  # SuperNodes that exited -> when it was noticed
    restarts: Counter = field(default_factory=Counter)
    spawn_env: dict[str, dict | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS")
        if not self.tls:
            log.warning("insecure_deployment", why="TLS is off: the Fleet and Control APIs talk plain gRPC/HTTP")

    @functools.cached_property
    def certs(self):
        from app.ops.certs import ensure_tls

        return ensure_tls(self.workdir / "certs")

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.environment}
        # The SuperLink spawns flower-superexec (and that, the ServerApp) from PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(self.workdir / "flwr-home")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, args: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - closed when the process is reaped; a restart appends
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}, cwd=cwd,
                                   start_new_session=True)
        out.close()
        self.processes[name] = process
        self.spawn_env[name] = env
        log.debug("process_started", name=name, pid=process.pid, log=str(logs / f"{name}.log"))
        return process

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def write_connection(self) -> None:
        home = self.workdir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        security = f'root-certificates = "{self.certs.ca_cert}"' if self.tls else "insecure = true"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.control_port}"\n{security}\n'
        )

    def superlink_security(self) -> list[str]:
        if not self.tls:
            return ["--insecure"]
        certs = self.certs
        args = ["--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert),
                "--ssl-keyfile", str(certs.server_key)]
        return args + (["--enable-supernode-auth"] if self.auth else [])

    def healthy(self) -> bool:
        scheme, context = ("https", ssl.create_default_context(cafile=self.certs.ca_cert)) if self.tls else ("http", None)
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.control_port}/health", timeout=2, context=context):
                return True
        except OSError:
            return False

    def start_superlink(self, cwd: Path, timeout: float = 60, check_health: bool = True) -> None:
        self.write_connection()
        self._spawn("superlink", [
            _bin("flower-superlink"), *self.superlink_security(),
            "--database", str(self.workdir / "state.db"),
            "--disable-runtime-dependency-installation",  # the app's dependencies are this environment's
            "--fleet-api-address", f"127.0.0.1:{self.fleet_port}",
            "--host", "127.0.0.1", "--port", str(self.control_port),
        ], cwd=cwd)
        if not check_health:  # e.g. a certificate this machine would refuse, on purpose
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.healthy():
                log.info("superlink_ready", control=f"127.0.0.1:{self.control_port}",
                         fleet=f"127.0.0.1:{self.fleet_port}", tls=self.tls)
                return
            time.sleep(0.5)
        raise TimeoutError(f"the SuperLink did not answer on 127.0.0.1:{self.control_port}:\n{self.log_tail('superlink')}")

    def register_node(self, name: str) -> Path:
        """Make `name`'s key pair and register its public key with the SuperLink, as a federation's owner does;
        returns the private key the node starts with."""
        from app.ops.certs import ensure_node_key

        private, public = ensure_node_key(self.workdir / "keys", name)
        result = self.flwr("supernode", "register", str(public), CONNECTION, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"flwr supernode register {name} failed: {result.stdout}{result.stderr}")
        return private

    def node_args(self, name: str, dataset_uri: str, model: str, fps: int = 30, cameras: str = "auto",
                  camera_map: str | None = None, auth_key: Path | None = None) -> list[str]:
        """The `fedvla node` command line of a SuperNode of this deployment. With authentication on, the node gets
        a freshly registered key unless `auth_key` names one."""
        security = ["--root-certificates", str(self.certs.ca_cert)] if self.tls else ["--insecure"]
        if self.auth:
            security += ["--auth-private-key", str(auth_key or self.register_node(name))]
        return [
            sys.executable, "-m", "app.cli", "node",
            "--superlink", f"127.0.0.1:{self.fleet_port}", *security,
            "--dataset-uri", dataset_uri, "--model", model, "--fps", str(fps), "--name", name,
            "--cameras", cameras, *(["--camera-map", camera_map] if camera_map is not None else []),
            "--clientappio-port", str(free_port()),
        ]

    def start_supernode(self, name: str, dataset_uri: str, model: str, threads: int | None = None,
                        args: list[str] | None = None, **node_args) -> None:
        """Start `fedvla node` (its warm worker checks the dataset, then flower-supernode starts beside it), with
        `args` or else `node_args(name, dataset_uri, model, **node_args)`. `threads` caps each node's CPU threads:
        nodes sharing one machine would otherwise oversubscribe its cores and all run slower."""
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else None
        self._spawn(name, args or self.node_args(name, dataset_uri, model, **node_args), env=env)
        self.nodes.add(name)

    def check_alive(self) -> None:
        """Raises when the SuperLink is gone, or every SuperNode for good. A lost SuperNode is logged once (the run
        goes on without it) and, with `restart_nodes`, started again the way a container restart policy would:
        after NODE_RESTART_DELAY seconds, up to NODE_RESTARTS times, never after exit code 2 (its dataset does not
        fit: a restart changes nothing)."""
        for name, process in list(self.processes.items()):
            code = process.poll()
            if code is None or name in self.lost:
                continue
            if name not in self.nodes:
                raise RuntimeError(f"{name} exited with code {code}:\n{self.log_tail(name)}")
            self.lost[name] = time.monotonic()
            log.warning("supernode_lost", name=name, code=code, log=str(self.workdir / "logs" / f"{name}.log"))
        for name, since in list(self.lost.items()):
            if self._restartable(name) and time.monotonic() - since >= NODE_RESTART_DELAY:
                self.restarts[name] += 1
                del self.lost[name]
                log.info("supernode_restart", name=name, attempt=self.restarts[name])
                self._spawn(name, self.processes[name].args, env=self.spawn_env[name])
        if self.nodes and all(n in self.lost and not self._restartable(n) for n in self.nodes):
            raise RuntimeError("every SuperNode has exited; the last one's log:\n" + self.log_tail(sorted(self.nodes)[-1]))

    def _restartable(self, name: str) -> bool:
        return self.restart_nodes and self.processes[name].returncode != 2 and self.restarts[name] < NODE_RESTARTS

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
                log.warning("process_killed", name=name, why=f"still running {grace:.0f} s after SIGTERM")
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.debug("process_stopped", name=name, code=process.returncode)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
