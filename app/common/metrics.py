"""Prometheus metrics of a federation: what the ServerApp and the ClientApps report, by name. No torch.

Flower starts a ServerApp process per run and a ClientApp process per message, and ends them; the long-running
exporter beside them (app.ops.exporter) serves what they recorded through prometheus_client's multiprocess mode:
the exporter sets PROMETHEUS_MULTIPROC_DIR for the Flower process it starts, each app process writes its values
there, and every scrape merges them. Gauges keep the most recent value written by any process; counters and
histograms add up over all processes, ended ones included. Without an exporter (the simulation, the tests) the
same calls update an ordinary in-process registry and cost nothing.

Every metric is listed in README.md ("Metrics reference"); tests/test_metrics.py checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # no `_created` series: they double the counters and mean nothing in multiprocess mode


def _gauge(name: str, documentation: str, labels: tuple[str, ...]) -> Gauge:
    return Gauge(name, documentation, labels, multiprocess_mode="mostrecent")


SERVER_LABELS = ("run_id",)
NODE_LABELS = ("run_id", "node")

# ServerApp: one set per run.
SERVER_ROUND = _gauge("fedvla_server_round", "Last federated round completed", SERVER_LABELS)
SERVER_ROUNDS_PLANNED = _gauge("fedvla_server_rounds_planned", "Rounds the run is configured for", SERVER_LABELS)
SERVER_ROUND_DURATION = Histogram(
    "fedvla_server_round_duration_seconds", "Wall time of a federated round (train, evaluate, server work)",
    SERVER_LABELS, buckets=(5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 3600),
)
SERVER_EVAL_LOSS = _gauge("fedvla_server_eval_loss", "Server-side held-out loss of the global model", SERVER_LABELS)
SERVER_TRAIN_LOSS = _gauge("fedvla_server_train_loss", "Sample-weighted train loss of the round's replies",
                           SERVER_LABELS)
SERVER_ROUND_NODES = _gauge("fedvla_server_round_nodes",
                            "Nodes in the last round: sampled, replied (usable) and dropped", SERVER_LABELS + ("state",))
SERVER_RECEIVED_BYTES = Counter("fedvla_server_received_bytes", "Model bytes received from nodes", SERVER_LABELS)
SERVER_SENT_BYTES = Counter("fedvla_server_sent_bytes", "Model bytes sent to nodes", SERVER_LABELS)
SERVER_CHECKPOINT_SECONDS = _gauge("fedvla_server_checkpoint_save_seconds", "Time the last checkpoint took to save",
                                   SERVER_LABELS)
SERVER_LAST_CHECKPOINT_ROUND = _gauge("fedvla_server_last_checkpoint_round", "Round of the last checkpoint saved",
                                      SERVER_LABELS)
SERVER_CHECKPOINT_INTERVAL = _gauge("fedvla_server_checkpoint_interval_rounds", "Rounds between the run's checkpoints",
                                    SERVER_LABELS)
SERVER_ROUND_COMPLETED_AT = _gauge("fedvla_server_round_completed_timestamp_seconds",
                                   "When the last round completed (unix time; the run's start before its first round)",
                                   SERVER_LABELS)
SERVER_EVALS_WITHOUT_IMPROVEMENT = _gauge("fedvla_server_evals_without_improvement",
                                          "Server evaluations since the best server eval loss so far", SERVER_LABELS)

# ClientApp: one set per run and node.
NODE_ROUND = _gauge("fedvla_node_round", "Last round this node trained", NODE_LABELS)
NODE_TRAIN_LOSS = _gauge("fedvla_node_train_loss", "Mean local train loss of the node's last round", NODE_LABELS)
NODE_STEPS_PER_SECOND = _gauge("fedvla_node_train_steps_per_second", "Optimizer steps per second, last round",
                               NODE_LABELS)
NODE_SAMPLES_PER_SECOND = _gauge("fedvla_node_train_samples_per_second", "Training samples per second, last round",
                                 NODE_LABELS)
NODE_TRAIN_SECONDS = Counter("fedvla_node_train_seconds", "Time spent in local training", NODE_LABELS)
NODE_SENT_BYTES = Counter("fedvla_node_sent_bytes", "Model bytes sent to the server", NODE_LABELS)
NODE_RECEIVED_BYTES = Counter("fedvla_node_received_bytes", "Model bytes received from the server", NODE_LABELS)
NODE_EVAL_LOSS = _gauge("fedvla_node_eval_loss", "Held-out loss of the global model on this node's data",
                        NODE_LABELS)
NODE_DATASET_EPISODES = _gauge("fedvla_node_dataset_episodes", "Episodes in this node's dataset", ("node",))
NODE_DATASET_FRAMES = _gauge("fedvla_node_dataset_frames", "Frames in this node's dataset", ("node",))

# The node's warm worker (app/node/worker.py): long-lived, so not per run.
WORKER_STARTS = Counter("fedvla_node_worker_starts", "Times the node's warm worker started (restarts = starts - 1)",
                        ("node",))
WORKER_MESSAGES = Counter("fedvla_node_worker_messages", "Messages the warm worker served", ("node", "kind"))
WORKER_POLICY_BUILDS = Counter("fedvla_node_worker_policy_builds",
                               "Policies (with dataset and processors) the warm worker built: one per run", ("node",))


def record_server_round(run_id: int, summary: Mapping, planned: int, sampled: int) -> None:
    """A finished round, from the run report's round summary (app.learning.report.round_summary)."""
    run = str(run_id)
    SERVER_ROUND.labels(run).set(summary["round"])
    SERVER_ROUND_COMPLETED_AT.labels(run).set_to_current_time()
    SERVER_ROUNDS_PLANNED.labels(run).set(planned)
    SERVER_ROUND_DURATION.labels(run).observe(summary["wall-seconds"])
    SERVER_TRAIN_LOSS.labels(run).set(summary["train-loss"])
    if summary.get("server-eval-loss") is not None:
        SERVER_EVAL_LOSS.labels(run).set(summary["server-eval-loss"])
    replied = [n for n in summary["nodes"].values() if n.get("samples")]
    SERVER_ROUND_NODES.labels(run, "sampled").set(sampled)
    SERVER_ROUND_NODES.labels(run, "replied").set(len(replied))
    SERVER_ROUND_NODES.labels(run, "dropped").set(len(summary.get("dropped", ())))
    SERVER_SENT_BYTES.labels(run).inc(summary.get("bytes-sent", 0))
    SERVER_RECEIVED_BYTES.labels(run).inc(summary.get("bytes-received", 0))


def record_server_start(run_id: int, planned: int, initial_eval_loss: float, first_round: int,
                        checkpoint_interval: int) -> None:
    run = str(run_id)
    SERVER_ROUNDS_PLANNED.labels(run).set(planned)
    SERVER_ROUND.labels(run).set(first_round - 1)
    SERVER_ROUND_COMPLETED_AT.labels(run).set_to_current_time()
    SERVER_EVAL_LOSS.labels(run).set(initial_eval_loss)
    SERVER_CHECKPOINT_INTERVAL.labels(run).set(checkpoint_interval)
    SERVER_LAST_CHECKPOINT_ROUND.labels(run).set(first_round - 1)  # where a carried-on run's weights came from


def record_server_evaluation(run_id: int, evaluations_without_improvement: int) -> None:
    SERVER_EVALS_WITHOUT_IMPROVEMENT.labels(str(run_id)).set(evaluations_without_improvement)


def record_checkpoint(run_id: int, server_round: int, seconds: float) -> None:
    SERVER_CHECKPOINT_SECONDS.labels(str(run_id)).set(seconds)
    SERVER_LAST_CHECKPOINT_ROUND.labels(str(run_id)).set(server_round)


def record_node_train(run_id: int, node: str, server_round: int, metrics: Mapping[str, float]) -> None:
    """A node's train reply (the metrics the ClientApp sends back)."""
    labels = (str(run_id), node)
    seconds = max(float(metrics["compute-seconds"]), 1e-9)
    NODE_ROUND.labels(*labels).set(server_round)
    NODE_TRAIN_LOSS.labels(*labels).set(metrics["train-loss"])
    NODE_STEPS_PER_SECOND.labels(*labels).set(metrics["steps"] / seconds)
    NODE_SAMPLES_PER_SECOND.labels(*labels).set(metrics["num-examples"] / seconds)
    NODE_TRAIN_SECONDS.labels(*labels).inc(metrics["compute-seconds"])
    NODE_SENT_BYTES.labels(*labels).inc(metrics["bytes-sent"])
    NODE_RECEIVED_BYTES.labels(*labels).inc(metrics["bytes-received"])


def record_node_eval(run_id: int, node: str, eval_loss: float, received_bytes: int) -> None:
    labels = (str(run_id), node)
    NODE_EVAL_LOSS.labels(*labels).set(eval_loss)
    NODE_RECEIVED_BYTES.labels(*labels).inc(received_bytes)


def record_worker_start(node: str, episodes: int, frames: int) -> None:
    """A worker started, having checked its node's dataset (of this size)."""
    WORKER_STARTS.labels(node).inc()
    NODE_DATASET_EPISODES.labels(node).set(episodes)
    NODE_DATASET_FRAMES.labels(node).set(frames)


def record_worker_message(node: str, kind: str, built_policy: bool) -> None:
    WORKER_MESSAGES.labels(node, kind).inc()
    if built_policy:
        WORKER_POLICY_BUILDS.labels(node).inc()
