"""app.ops.flower_nodes: the SuperNodes of Flower's own node list as Prometheus series, from a real SuperLink's
Control API, with a real SuperNode that connects and then goes away."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from prometheus_client import CollectorRegistry, generate_latest

from app.ops.flower_nodes import FlowerNodesCollector, control_api_lister, node_statuses
from app.ops.launch import Deployment, _bin


def series(collector: FlowerNodesCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_every_node_still_in_the_federation_is_listed_with_when_it_was_last_online():
    infos = [NodeInfo(node_id=3, owner_name="op", status="offline", last_deactivated_at="2026-12-07T10:00:00+00:00"),
             NodeInfo(node_id=1, owner_name="op", status="online"),
             NodeInfo(node_id=2, owner_name="op", status="unregistered"),
             NodeInfo(node_id=4, owner_name="op", status="registered")]
    statuses = node_statuses(infos, now=1234.0)
    assert [(s.node_id, s.status, s.last_seen) for s in statuses] == [
        (1, "online", 1234.0), (3, "offline", 1796637600.0), (4, "registered", None)]


def test_a_superlink_that_does_not_answer_keeps_the_last_list_and_says_so():
    answers = [[NodeInfo(node_id=7, owner_name="op", status="online")], ConnectionError("refused")]

    def lister():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    collector = FlowerNodesCollector(lister)
    collector.poll()
    assert 'fedvla_superlink_node_online{node_id="7",owner="op"} 1.0' in series(collector)
    collector.poll()
    text = series(collector)
    assert "fedvla_superlink_node_list_up 0.0" in text and 'node_id="7"' in text


@pytest.mark.integration
def test_a_real_supernode_is_online_then_offline_once_it_is_gone(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "exporter-flwr-home"))
    with Deployment(tmp_path, tls=True) as deployment:
        deployment.start_superlink(cwd=tmp_path)
        node = subprocess.Popen([_bin("flower-supernode"), "--superlink", f"127.0.0.1:{deployment.fleet_port}",
                                 "--root-certificates", str(deployment.certs.ca_cert)],
                                env=deployment.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            collector = FlowerNodesCollector(control_api_lister(f"127.0.0.1:{deployment.control_port}",
                                                                str(deployment.certs.ca_cert), insecure=False))

            def wait_for(status: str, timeout: float) -> list:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    collector.poll()
                    if collector.up and [n.status for n in collector.nodes] == [status]:
                        return collector.nodes
                    time.sleep(1)
                raise AssertionError(f"no node {status} after {timeout} s: {collector.nodes}, up={collector.up}")

            (online,) = wait_for("online", 60)
            assert f'fedvla_superlink_node_online{{node_id="{online.node_id}"' in series(collector)
            node.send_signal(signal.SIGKILL)  # gone without a word (a crash, a power cut): Flower's heartbeat finds out
            node.wait(timeout=30)
            (offline,) = wait_for("offline", 180)
            assert offline.node_id == online.node_id and offline.last_seen is not None
            assert f'fedvla_superlink_node_online{{node_id="{online.node_id}",owner="{online.owner}"}} 0.0' in series(collector)
        finally:
            node.kill()
