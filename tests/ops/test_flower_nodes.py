"""app.ops.flower_nodes: the SuperNodes of Flower's own node list as Prometheus series. The Control API itself is
asked in the container test (tests/containers/test_compose.py), which freezes a SuperNode and waits for Flower to
list it offline and for the alert to fire through the real Prometheus."""

from __future__ import annotations

from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from prometheus_client import CollectorRegistry, generate_latest

from app.ops.flower_nodes import FlowerNodesCollector, node_statuses


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
