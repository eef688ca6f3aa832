"""ClientApp: a message in -> train, evaluate or report stats on this node's data -> a message out.

The node's data comes from its node-config (`dataset-uri`, or `partition-id`/`num-partitions` in a simulation).
The work itself is app.federation.client_work's `perform`: in the node's warm worker when the node-config names one
(`worker-socket`, set by `fedvla node`), so this process imports neither torch nor LeRobot; otherwise (the
simulation engine, a bare flower-supernode) in this process.
"""

from __future__ import annotations

import sys
import time

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from app.common.config import NodeConfig
from app.common.telemetry import configure_logging, get_logger
from app.federation import client_work, wire

log = get_logger(__name__)
app = ClientApp()


def _handle(op: str, msg: Message, context: Context) -> Message:
    node = NodeConfig.from_mapping(context.node_config)
    configure_logging(log_file=client_work.node_log_dir(node) / "client.log")
    request = (op, context.run_id, dict(context.run_config), dict(context.node_config))
    if node.worker_socket:
        content = _forward(node, request, msg.content)
    else:
        content = client_work.perform(*request, msg.content, state=context.state)
    return Message(content=wire.pack_records(content), reply_to=msg)


def _forward(node: NodeConfig, request: tuple, content: RecordDict) -> RecordDict:
    from flwr.common.serde import ProtoRecordDict, recorddict_from_proto, recorddict_to_proto

    import psutil

    from app.federation import channel
    started = time.perf_counter()
    # How long Flower's flwr-clientapp process took from its start to this handler (interpreter, FAB install,
    # app import, message pull): the part of a round's latency that a warm worker cannot remove.
    startup = time.time() - psutil.Process().create_time()
    header = dict(zip(client_work.REQUEST_KEYS, request, strict=True))
    limits = channel.Limits(stall_seconds=node.worker_stall_seconds)
    answer = channel.call(node.worker_socket, header, recorddict_to_proto(content).SerializeToString(), limits,
                          log_hint=str(client_work.node_log_dir(node) / "worker.log"))
    log.info("message_forwarded", op=request[0], node=node.label(), seconds=round(time.perf_counter() - started, 2),
             startup_seconds=round(startup, 2),
             heavy_imports=sorted(m for m in ("torch", "lerobot", "transformers") if m in sys.modules))
    return recorddict_from_proto(ProtoRecordDict.FromString(answer))


@app.query()
def report_stats(msg: Message, context: Context) -> Message:
    """Share this node's state/action normalization stats (never its data) so the federation can merge them."""
    return _handle(client_work.QUERY, msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(client_work.TRAIN, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(client_work.EVALUATE, msg, context)
