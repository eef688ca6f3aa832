"""ClientApp: a message in -> train, evaluate or report stats on this node's data -> a message out.

The node's data comes from its node-config (`dataset-uri`, or `partition-id`/`num-partitions` in a simulation);
everything about learning happens in app.node, which this file feeds with plain tensors and dictionaries.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from app import metrics as node_metrics
from app.config import NodeConfig, RunConfig, fedvla_home
from app.errors import ModelError
from app.node import RECEIVED_EVAL_LOSS
from app.telemetry import configure_logging, get_logger

log = get_logger(__name__)
app = ClientApp()


def _setup(msg: Message, context: Context):
    from app.node import learner_for

    node = NodeConfig.from_mapping(context.node_config)
    # Nodes keep their own logs: one JSON-lines file per node on the node's machine.
    configure_logging(log_file=fedvla_home() / "logs" / f"client_{node.label()}" / "client.log")
    run = RunConfig.from_mapping(context.run_config)
    learner = learner_for(run, node)
    expected = msg.content["config"].get("base-fingerprint")
    if expected is not None and expected != learner.fingerprint:
        raise ModelError(
            f"node {node.label()!r}: its frozen base model (fingerprint {learner.fingerprint}) differs from the "
            f"server's ({expected}) for model {run.model!r}; install the same base model version on this node"
        )
    return node, learner


def _node_record(node: NodeConfig, learner) -> ConfigRecord:
    from app.data import public_name

    return ConfigRecord({"node-name": node.label(), "dataset": public_name(learner.data.ref.uri)})


def _stats(msg: Message) -> dict:
    return dict(msg.content["norm-stats"])


@app.query()
def report_stats(msg: Message, context: Context) -> Message:
    """Share this node's state/action normalization stats (never its data) so the federation can merge them."""
    node, learner = _setup(msg, context)
    log.info("stats_requested", node=node.label())
    content = RecordDict({"norm-stats": ConfigRecord(learner.local_stats()), "node": _node_record(node, learner)})
    content["metrics"] = MetricRecord({"num-examples": len(learner.data.train)})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    node, learner = _setup(msg, context)
    received = msg.content["arrays"]
    config = msg.content["config"]
    server_round = int(config["server-round"])
    result = learner.train_round(received.to_torch_state_dict(), _stats(msg), float(config["lr"]), server_round,
                                 evaluate_first=bool(config.get("evaluate-received", False)))
    if RECEIVED_EVAL_LOSS in result.metrics:
        node_metrics.record_node_eval(context.run_id, node.label(), result.metrics[RECEIVED_EVAL_LOSS], 0)
    arrays = ArrayRecord(result.arrays)
    metrics = {
        **result.metrics,
        "bytes-received": node_metrics.arrays_bytes(received),
        "bytes-sent": node_metrics.arrays_bytes(arrays),
    }
    log.info("round_trained", node=node.label(), round=server_round, **metrics)
    node_metrics.record_node_train(context.run_id, node.label(), server_round, metrics)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics), "node": _node_record(node, learner)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    node, learner = _setup(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    metrics = learner.evaluate(msg.content["arrays"].to_torch_state_dict(), _stats(msg))
    log.info("round_evaluated", node=node.label(), round=server_round, **metrics)
    node_metrics.record_node_eval(context.run_id, node.label(), metrics["eval-loss"],
                                  node_metrics.arrays_bytes(msg.content["arrays"]))
    content = RecordDict({"metrics": MetricRecord(metrics), "node": _node_record(node, learner)})
    return Message(content=content, reply_to=msg)
