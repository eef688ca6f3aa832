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


@pytest.fixture(scope="session")
def fedvla_home() -> Path:
    return Path(os.environ["FEDVLA_HOME"])


@pytest.fixture(scope="session")
def tiny_config():
    from app import model

    return model.load_config("embedded:tiny", "cpu")


@pytest.fixture(scope="session")
def operator0(tiny_config):
    """(NodeData, stats) of embedded operator 0, split as the nodes split it."""
    from app import data, model

    return data.load_node_data(
        "embedded:operator-0",
        model.policy_schema(tiny_config, 30),
        lambda meta: model.delta_timestamps(tiny_config, meta),
        heldout_fraction=0.2,
        seed=0,
    )


@pytest.fixture
def tiny_policy(tiny_config):
    from app import model

    return model.build_policy("embedded:tiny", tiny_config)
