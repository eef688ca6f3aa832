"""Who gets into a federation, with real processes: a SuperLink with TLS and SuperNode authentication on
127.0.0.1, and `fedvla node`s that should and should not get in. A registered node joins; an unregistered key, no
key, a CA that did not sign the SuperLink's certificate and an expired certificate are each refused with one line
that names the fix (`fedvla node` exits 2); a SuperLink that is not there is retried with its address in the log;
a revoked key is refused when its node comes back."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import time

import pytest

from app.learning import embedded
from app.ops.certs import ensure_node_key, ensure_tls
from app.ops.demo import APP_DIR
from app.ops.launch import CONNECTION, Deployment, free_port

pytestmark = pytest.mark.integration


def events(deployment: Deployment, name: str, event: str) -> list[dict[str, str]]:
    """The node's log lines for `event`, as {key: value} (a node logs to its console: `[level] event key=value`)."""
    path = deployment.workdir / "logs" / f"{name}.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [dict(re.findall(r"(\w+)=(\S+)", line)) for line in lines if f"] {event} " in line]


def node_logged(deployment: Deployment, name: str, event: str) -> bool:
    return bool(events(deployment, name, event))


def wait_for(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def swap(args: list[str], flag: str, value: str | None) -> list[str]:
    """A node's command line with `flag`'s value replaced (None: the flag removed), on a port of its own."""
    i = args.index(flag)
    args = args[:i] + ([flag, value] if value is not None else []) + args[i + 2:]
    port = args.index("--clientappio-port") + 1
    return args[:port] + [str(free_port())] + args[port + 1:]


def exit_line(deployment: Deployment, name: str, timeout: float = 180.0) -> tuple[int, str]:
    """How a refused `fedvla node` ended: its exit code and its last line."""
    code = deployment.processes[name].wait(timeout=timeout)
    return code, deployment.log_tail(name, 1)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    embedded.ensure_base_model()
    dataset = str(embedded.ensure_operator_dataset(0))
    workdir = tmp_path_factory.mktemp("admission")
    with Deployment(workdir, auth=True) as deployment:
        deployment.start_superlink(cwd=APP_DIR)
        base = deployment.node_args("member", dataset, "embedded:tiny")  # registers member's key
        deployment.start_supernode("member", dataset, "embedded:tiny", threads=1, args=base)
        stranger, _ = ensure_node_key(workdir / "elsewhere", "stranger")
        deployment.start_supernode("stranger", "", "", threads=1, args=swap(base, "--auth-private-key", str(stranger)))
        deployment.start_supernode("keyless", "", "", threads=1, args=swap(base, "--auth-private-key", None))
        other_ca = ensure_tls(workdir / "other-ca").ca_cert
        deployment.start_supernode("wrong-ca", "", "", threads=1,
                                   args=swap(base, "--root-certificates", str(other_ca)))
        nowhere = f"127.0.0.1:{free_port()}"
        deployment.start_supernode("no-superlink", "", "", threads=1, args=swap(base, "--superlink", nowhere))
        yield deployment, base, nowhere


def test_a_registered_node_joins(federation, ledger):
    deployment, _, _ = federation
    wait_for(lambda: node_logged(deployment, "member", "superlink_connected"), "the registered node connected")
    listed = json.loads(deployment.flwr("supernode", "ls", CONNECTION, "--format", "json", timeout=60).stdout)
    ledger.book("registered node admitted over TLS")
    assert [n["status"] for n in listed["nodes"]] == ["online"], listed


@pytest.mark.parametrize(("name", "says"), [
    ("stranger", "does not know this node's key"),
    ("keyless", "only admits registered SuperNodes"),
    ("wrong-ca", "not signed by --root-certificates"),
])
def test_a_node_that_may_not_join_is_refused_with_one_line(federation, ledger, name, says):
    deployment, _, _ = federation
    code, last = exit_line(deployment, name)
    ledger.book(f"refused: {name}", faults=1)
    assert code == 2, last
    assert last.startswith("fedvla node: error: the SuperLink at 127.0.0.1:") and says in last, last


def test_an_unreachable_superlink_is_retried_and_named(federation, ledger):
    deployment, _, nowhere = federation
    wait_for(lambda: len(events(deployment, "no-superlink", "superlink_unreachable")) >= 3, "three connection attempts")
    tried = events(deployment, "no-superlink", "superlink_unreachable")
    ledger.book("unreachable SuperLink retried", faults=1)
    assert deployment.processes["no-superlink"].poll() is None  # still trying
    assert {e["superlink"] for e in tried} == {nowhere}
    assert [e["attempt"] for e in tried[:3]] == ["1", "2", "3"]


def test_a_revoked_key_is_refused_when_its_node_comes_back(federation, ledger):
    deployment, base, _ = federation
    wait_for(lambda: node_logged(deployment, "member", "superlink_connected"), "the registered node connected")
    (node,) = json.loads(deployment.flwr("supernode", "ls", CONNECTION, "--format", "json", timeout=60).stdout)["nodes"]
    revoked = deployment.flwr("supernode", "unregister", str(node["node-id"]), CONNECTION, timeout=60)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    os.killpg(deployment.processes["member"].pid, signal.SIGKILL)  # the PC goes down; it comes back later
    deployment.processes["member"].wait()
    deployment.start_supernode("member-again", "", "", threads=1, args=swap(base, "--name", "member-again"))
    code, last = exit_line(deployment, "member-again")
    ledger.book("revoked key refused", faults=1)
    assert code == 2 and "does not know this node's key" in last, last


def test_an_expired_superlink_certificate_is_refused(tmp_path, ledger):
    dataset = str(embedded.ensure_operator_dataset(0))
    with Deployment(tmp_path) as deployment:
        deployment.certs = ensure_tls(tmp_path / "certs", not_after=datetime.datetime.now(datetime.UTC)
                                      - datetime.timedelta(days=1))
        deployment.start_superlink(cwd=APP_DIR, check_health=False)
        deployment.start_supernode("late", dataset, "embedded:tiny", threads=1)
        code, last = exit_line(deployment, "late")
    ledger.book("expired certificate refused", faults=1)
    assert code == 2 and "expired TLS certificate" in last, last
