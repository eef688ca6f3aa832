"""The layering of app/, read from the source (every import, the ones inside functions too): the learning core
imports no Flower and nothing from the federation, the node runtime, operations or the command line above it."""

from __future__ import annotations

import ast
from pathlib import Path

import app

APP = Path(app.__file__).parent
BASE = {"errors", "telemetry", "config", "metrics"}  # below everything: failures, logs, settings, metric names
CORE = {"data", "model", "train", "evaluate", "checkpoint", "node", "codec", "embedded", "predict", "standalone",
        "report", "resume"}  # the learning: a policy, its data, training, evaluation, checkpoints and outputs


def module_name(path: Path) -> str:
    parts = path.relative_to(APP).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The top-level names of what `path` imports: 'flwr', 'torch', ..., and app's own modules as 'app.<name>'."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" if node.module == "app" else node.module for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative, inside app.embedded
            names = ["app.embedded"]
        else:
            continue
        found |= {"app." + name.split(".")[1] if name.startswith("app.") else name.split(".")[0] for name in names}
    return found


def core_files() -> list[Path]:
    return [p for p in APP.rglob("*.py") if module_name(p).split(".")[0] in CORE]


def test_every_module_has_a_role():
    placed = BASE | CORE | {"wire", "strategy", "server_app", "client_app", "worker", "channel", "supervisor",
                            "supernode_watch", "launch", "certs", "exporter", "tracking", "hub", "status", "demo",
                            "cli", ""}
    assert {module_name(p).split(".")[0] for p in APP.rglob("*.py")} <= placed


def test_the_learning_core_imports_no_flower_and_nothing_above_it():
    allowed = {f"app.{name}" for name in BASE | CORE}
    found = {}
    for path in core_files():
        wrong = sorted(name for name in imports(path) if name == "flwr" or (name.startswith("app.")
                                                                            and name not in allowed))
        if wrong:
            found[module_name(path)] = wrong
    assert len(core_files()) >= 14 and found == {}
