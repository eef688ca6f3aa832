"""The layering of app/, read from the source (every import, the ones inside functions too): each package imports
only the packages below it (app/__init__.py lists them, lowest first), the learning core and the codec's arithmetic
import no Flower, no module is over 400 lines, and tests/ mirrors the packages."""

from __future__ import annotations

import ast
from pathlib import Path

import app

APP = Path(app.__file__).parent
TESTS = Path(__file__).parent
LAYERS = ["common", "learning", "federation", "node", "ops", "cli"]  # lowest first
FLOWER_FREE = {"common", "learning", "federation.codec"}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(APP).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """What `path` imports: top-level names ('flwr', 'torch', ...) and app's own as dotted names ('app.learning.model')."""
    found = set()
    package = ".".join(("app", *path.relative_to(APP).parts[:-1]))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name if a.name.startswith("app.") else a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: inside app
                module = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([module] if module else []))
            if module == "app" or module.startswith("app."):
                found |= {f"{module}.{a.name}" for a in node.names}
            else:
                found.add(module.split(".")[0])
    return found


def layer(dotted: str) -> str | None:
    """The package of an app module ('app.learning.model' -> 'learning'); None for app's own __init__."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def modules() -> list[Path]:
    return sorted(APP.rglob("*.py"))


def test_every_module_is_in_a_package_of_the_map():
    assert {module_name(p).split(".")[0] for p in modules()} == set(LAYERS) | {""}
    described = (APP / "__init__.py").read_text()
    assert all(f"app.{name}" in described for name in LAYERS), "app/__init__.py maps every package"


def test_no_package_imports_one_above_it():
    wrong = {}
    for path in modules():
        own = module_name(path).split(".")[0]
        if not own:
            continue
        above = {name for name in imports(path) if name.startswith("app.")
                 and LAYERS.index(layer(name)) > LAYERS.index(own)}
        if above:
            wrong[module_name(path)] = sorted(above)
    assert wrong == {}


def test_the_learning_core_and_the_codecs_arithmetic_import_no_flower():
    checked = [p for p in modules() if any(module_name(p) == name or module_name(p).startswith(name + ".")
                                           for name in FLOWER_FREE)]
    flower = sorted(module_name(p) for p in checked if "flwr" in imports(p))
    assert len(checked) >= 20 and flower == []


def test_no_module_is_over_the_line_limit():
    long = {module_name(p): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_tests_mirror_the_packages():
    """A package's unit tests live in tests/<package>/ (the cross-package suites in integration/, reliability/,
    containers/, and the benchmarks' in bench/)."""
    for package in LAYERS:
        assert (TESTS / package / "__init__.py").is_file(), f"tests/{package}/"
    stray = sorted(p.name for p in TESTS.glob("test_*.py") if p.name != "test_layering.py")
    assert stray == []
