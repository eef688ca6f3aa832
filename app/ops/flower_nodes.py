"""The federation's SuperNodes as Prometheus series, from Flower's own node list: what `flwr supernode ls` shows,
asked of the SuperLink's Control API (ListNodes) by the exporter beside it. A node whose container or machine is
gone stays a series, offline, with the time it was last online; discovering the nodes' own exporters cannot say
that, since a node that is gone has no exporter left to find.

The list is asked for every POLL_SECONDS in a thread of its own, so a scrape answers from the last answer at once
and a SuperLink that is slow or down costs the scrape nothing (`fedvla_superlink_node_list_up` says whether the
last ask succeeded).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from app.common.telemetry import get_logger

log = get_logger(__name__)
POLL_SECONDS = 10.0
KNOWN = ("online", "offline", "registered")  # Flower's statuses; an unregistered node is no longer in the federation


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    owner: str
    status: str  # online, offline, registered (never connected yet)
    last_seen: float | None  # unix time it was last online; now while online; None if never


def _timestamp(text: str) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def node_statuses(nodes_info, now: float) -> list[NodeStatus]:
    """Flower's NodeInfo records -> the nodes still in the federation, with when each was last online."""
    statuses = []
    for node in nodes_info:
        if node.status not in KNOWN:
            continue
        last_seen = now if node.status == "online" else _timestamp(node.last_deactivated_at)
        statuses.append(NodeStatus(int(node.node_id), node.owner_name, node.status, last_seen))
    return sorted(statuses, key=lambda s: s.node_id)


def control_api_lister(address: str, root_certificates: str | None, insecure: bool) -> Callable[[], list]:
    """A function returning the SuperLink's NodeInfo records, through Flower's own Control API client."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest  # pylint: disable=E0611

    connection = SuperLinkConnection("fedvla-exporter", address, root_certificates, insecure)

    def list_nodes() -> list:
        client = init_http_client_from_connection(connection)
        try:
            return list(client.ListNodes(ListNodesRequest()).nodes_info)
        finally:
            client.close()

    return list_nodes


class FlowerNodesCollector:
    """A prometheus_client collector of the last node list `list_nodes` returned, refreshed in the background."""

    def __init__(self, list_nodes: Callable[[], list], poll_seconds: float = POLL_SECONDS):
        self.list_nodes, self.poll_seconds = list_nodes, poll_seconds
        self.nodes: list[NodeStatus] = []
        self.up = False
        self._problem = ""

    def start(self) -> FlowerNodesCollector:
        threading.Thread(target=self._poll_forever, daemon=True, name="flower-nodes").start()
        return self

    def poll(self) -> None:
        try:
            self.nodes, self.up = node_statuses(self.list_nodes(), time.time()), True
            if self._problem:
                log.info("node_list_recovered")
            self._problem = ""
        except Exception as exc:  # the SuperLink starting, restarting or gone: keep the last list, say it once
            self.up = False
            problem = f"{type(exc).__name__}: {exc}"
            if problem != self._problem:
                log.warning("node_list_unavailable", why=problem, then=f"asking again every {self.poll_seconds:g} s")
            self._problem = problem

    def _poll_forever(self) -> None:
        while True:
            self.poll()
            time.sleep(self.poll_seconds)

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["node_id", "owner"]
        online = GaugeMetricFamily("fedvla_superlink_node_online",
                                   "1 while the SuperNode is online, 0 once Flower has it offline (Flower's node list)",
                                   labels=labels)
        seen = GaugeMetricFamily("fedvla_superlink_node_last_seen_timestamp_seconds",
                                 "When the SuperNode was last online (unix time; now while it is)", labels=labels)
        for node in self.nodes:
            values = [str(node.node_id), node.owner]
            online.add_metric(values, 1.0 if node.status == "online" else 0.0)
            if node.last_seen is not None:
                seen.add_metric(values, node.last_seen)
        up = GaugeMetricFamily("fedvla_superlink_node_list_up",
                               "1 if the SuperLink answered the exporter's last ask for its node list")
        up.add_metric([], 1.0 if self.up else 0.0)
        yield from (online, seen, up)
