"""Shared fixtures. The embedded artifacts (tiny SmolVLA, synthetic datasets) are generated once per test session
into a temporary FEDVLA_HOME, unless the caller points FEDVLA_HOME at a cache it wants reused (CI does)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

if "FEDVLA_HOME" not in os.environ:
    os.environ["FEDVLA_HOME"] = tempfile.mkdtemp(prefix="fedvla-test-home-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ledger():
    """What a fault-injecting test did, for the session's reliability summary (tests/reliability/ledger.py)."""
    from tests.reliability.ledger import LEDGER

    return LEDGER


def pytest_sessionfinish(session):
    """On a pytest-xdist worker: hand the worker's ledger entries to the controller."""
    if hasattr(session.config, "workeroutput"):
        from tests.reliability.ledger import LEDGER

        session.config.workeroutput["ledger"] = LEDGER.dump()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the pytest-xdist controller: a worker finished; keep its ledger entries for the summary."""
    from tests.reliability.ledger import LEDGER

    if dumped := getattr(node, "workeroutput", {}).get("ledger"):
        LEDGER.merge(dumped)


def pytest_terminal_summary(terminalreporter):
    from tests.reliability.ledger import write_summary

    write_summary(terminalreporter)


# The modules that use `shared_deployment`, in the order they run (one after another, where the first of them was
# collected): node loss last, as it leaves a node dead.
SHARED_DEPLOYMENT_ORDER = ("test_warm_nodes.py", "test_crash_resume.py", "test_data_stays_home.py", "test_secrets.py",
                           "test_node_loss.py")


def pytest_collection_modifyitems(items):
    shared = sorted((item for item in items if item.path.name in SHARED_DEPLOYMENT_ORDER),
                    key=lambda item: SHARED_DEPLOYMENT_ORDER.index(item.path.name))  # stable: a module's own order
    if shared:
        others = [item for item in items if item.path.name not in SHARED_DEPLOYMENT_ORDER]
        first = items.index(next(item for item in items if item.path.name in SHARED_DEPLOYMENT_ORDER))
        items[:] = others[:first] + shared + others[first:]


@pytest.fixture(scope="session")
def shared_deployment(tmp_path_factory):
    """The session's one authenticated deployment of two warm SuperNodes, for the tests that need a running
    federation (tests/integration/shared_deployment.py: how they share it, and the order they run in)."""
    from tests.integration.shared_deployment import SharedDeployment

    with SharedDeployment.running(tmp_path_factory.mktemp("shared-deployment")) as shared:
        yield shared


@pytest.fixture(scope="session")
def fedvla_home() -> Path:
    return Path(os.environ["FEDVLA_HOME"])


@pytest.fixture(scope="session")
def tiny_config():
    from app.learning import model
    return model.load_config("embedded:tiny", "cpu")


@pytest.fixture(scope="session")
def operator0(tiny_config):
    """(NodeData, stats) of embedded operator 0, split as the nodes split it."""
    from app.learning import data, model
    return data.load_node_data(
        "embedded:operator-0",
        model.policy_schema(tiny_config, 30),
        lambda meta: model.delta_timestamps(tiny_config, meta),
        heldout_fraction=0.2,
        seed=0,
    )


@pytest.fixture
def tiny_policy(tiny_config):
    from app.learning import model
    return model.build_policy("embedded:tiny", tiny_config)
