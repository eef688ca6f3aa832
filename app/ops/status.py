"""`fedvla status`: is the SuperLink reachable, which SuperNodes are connected, which runs exist.

Flower answers each question itself (`flwr supernode ls`, `flwr ls`, as JSON, through the connection named in
`$FLWR_HOME/config.toml`); this puts the answers on one screen and turns them into an exit code a script can use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from app.common.telemetry import get_logger

log = get_logger(__name__)
FLWR_TIMEOUT_SECONDS = 60


@dataclass
class FederationStatus:
    connection: str  # "" for Flower's default connection
    reachable: bool
    problem: str = ""  # why the SuperLink could not be asked, in Flower's words
    nodes: list[dict] = field(default_factory=list)  # Flower's records: node-id, owner-name, status, online-at, ...
    runs: list[dict] = field(default_factory=list)  # run-id, status, elapsed, network-traffic, ...

    @property
    def online(self) -> list[dict]:
        return [node for node in self.nodes if node.get("status") == "online"]


def flwr_command() -> str:
    return shutil.which("flwr") or str(Path(sys.executable).parent / "flwr")


def ask_flwr(*args: str, connection: str = "") -> dict:
    """One `flwr ... --format json` answer; {"success": False, "error-message": ...} when there is none."""
    command = [flwr_command(), *args, *([connection] if connection else []), "--format", "json"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=FLWR_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return {"success": False, "error-message": f"`flwr {' '.join(args)}` gave no answer in {FLWR_TIMEOUT_SECONDS} s"}
    try:
        return json.loads(result.stdout)
    except ValueError:
        return {"success": False, "error-message": (result.stderr or result.stdout).strip()[-500:]}


def flower_config_file() -> Path:
    """Where `flwr` reads its SuperLink connections: $FLWR_HOME/config.toml, else ~/.flwr/config.toml."""
    from flwr.supercore.utils import get_flwr_home

    return get_flwr_home() / "config.toml"


def federation_status(connection: str = "") -> FederationStatus:
    config = flower_config_file()
    if not config.is_file():  # flwr would write a default one and answer at length: say what is missing instead
        return FederationStatus(connection, reachable=False, problem=(
            f"no SuperLink connection is configured ({config} does not exist): write one there, as "
            "deploy/connection.sh does, or set FLWR_HOME to a directory holding one"))
    nodes = ask_flwr("supernode", "ls", connection=connection)
    if not nodes.get("success"):
        return FederationStatus(connection, reachable=False, problem=_flower_reason(nodes.get("error-message", "")))
    runs = ask_flwr("ls", connection=connection)
    return FederationStatus(connection, reachable=True, nodes=nodes.get("nodes", []), runs=runs.get("runs", []),
                            problem="" if runs.get("success") else _flower_reason(runs.get("error-message", "")))


def _flower_reason(message: str) -> str:
    """Flower's message without its progress lines ("Using SuperLink ...", "Listing all runs...")."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith("Using SuperLink") and not line.endswith("...")]
    return " ".join(reasons or lines)
