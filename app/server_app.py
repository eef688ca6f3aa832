"""ServerApp: run-config -> federation stats -> FedProx rounds -> server evaluation, checkpoints, reports.

Round r: the strategy sends the global trainable arrays to the sampled nodes, which train locally and reply;
their sample-weighted average becomes the new global model; every `eval-frequency` rounds the nodes evaluate
it on their held-out episodes and the server on its own held-out dataset. Checkpoints are written every
`checkpoint-interval` rounds and after the last round. Everything fails before round 1 if the config, the
model or the server's evaluation dataset is wrong.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from app.config import RunConfig
from app.telemetry import configure_logging, get_logger

log = get_logger(__name__)
app = ServerApp()


def collect_federated_stats(grid: Grid, run: RunConfig, fingerprint: str) -> dict[str, list[float]]:
    """Ask every node for its state/action stats and merge them: one normalization for the whole federation."""
    from app.node import federated_stats

    deadline = time.monotonic() + run.round_timeout
    while len(node_ids := list(grid.get_node_ids())) < run.min_available_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(node_ids)} of min-available-nodes={run.min_available_nodes} nodes connected")
        log.info("waiting_for_nodes", connected=len(node_ids), needed=run.min_available_nodes)
        time.sleep(2)
    content = RecordDict({"config": ConfigRecord({"base-fingerprint": fingerprint})})
    messages = [Message(content=content, dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
    replies = list(grid.send_and_receive(messages, timeout=run.round_timeout))
    good = [r for r in replies if not r.has_error()]
    for reply in replies:
        if reply.has_error():
            log.error("node_refused", node_id=reply.metadata.src_node_id, why=reply.error.reason)
    if len(good) < run.min_train_nodes:
        raise RuntimeError(f"only {len(good)} node(s) are usable, min-train-nodes={run.min_train_nodes}; see node errors above")
    return federated_stats([dict(r.content["norm-stats"]) for r in good])


class EarlyStop:
    """Stop when the server eval loss has not improved by `min_delta` for `patience` evaluations (0: never)."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.stale = math.inf, 0

    def should_stop(self, loss: float) -> bool:
        if loss < self.best - self.min_delta:
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        return self.patience > 0 and self.stale >= self.patience


def should_checkpoint(server_round: int, run: RunConfig, stopping: bool) -> bool:
    """Every checkpoint-interval rounds, and always the last round (the planned last, or an early stop)."""
    return server_round % run.checkpoint_interval == 0 or server_round == run.num_server_rounds or stopping


@app.main()
def main(grid: Grid, context: Context) -> None:
    from app import model as models
    from app.checkpoint import render_model_card, save_checkpoint
    from app.hub import push_checkpoint, should_push
    from app.node import Learner, unflatten_stats
    from app.report import RunOutputs
    from app.strategy import FedVLA

    run = RunConfig.from_mapping(context.run_config)
    outputs = RunOutputs.create(Path(run.output_dir), context.run_config, run_id=context.run_id)
    configure_logging(log_file=outputs.run_log, app_log_file=outputs.server_log)
    log.info("run_start", outputs=str(outputs.root), run_config=dict(context.run_config))

    server = Learner(run, run.server_eval_dataset)  # the global model, and the server's held-out data
    stats = collect_federated_stats(grid, run, server.fingerprint)
    replies_seen: dict[int, dict[str, dict]] = {}

    def on_replies(kind, server_round, reports):
        for rep in reports:
            outputs.record_client_reply(kind, server_round, rep.name, rep.node_id, rep.dataset, rep.metrics)
            replies_seen.setdefault(server_round, {}).setdefault(rep.name, {})[kind] = rep.metrics

    arrays = ArrayRecord(models.trainable_state(server.policy))
    strategy = FedVLA(run, server.fingerprint, stats, set(arrays.keys()), on_replies)
    outputs.record_server_eval(0, server.evaluate(arrays.to_torch_state_dict(), stats))
    nodes = set()
    early_stop = EarlyStop(run.early_stop_patience, run.early_stop_min_delta)
    last_round = 0

    def checkpoint(server_round: int, metrics: dict) -> Path:
        preprocessor, postprocessor = models.build_processors(server.config, unflatten_stats(stats))
        models.load_trainable_state(server.policy, arrays.to_torch_state_dict())
        facts = {"base model": run.model, "rounds": server_round, "nodes": ", ".join(sorted(nodes)),
                 "strategy": f"FedProx (mu={run.proximal_mu})", "server eval dataset": run.server_eval_dataset,
                 **{k: v for k, v in context.run_config.items() if k not in ("model", "server-eval-dataset")}}
        card = render_model_card(
            f"SmolVLA federated fine-tune, round {server_round}",
            "SmolVLA fine-tuned with federated learning (Flower, FedProx): each operator trained on its own "
            "SO-100 recordings, which never left its machine; only trainable weights were exchanged.",
            facts, metrics,
        )
        path = outputs.models / f"checkpoint_round_{server_round}"
        save_checkpoint(path, server.policy, preprocessor, postprocessor, metrics | {"round": server_round}, card)
        log.info("checkpoint_saved", round=server_round, path=str(path))
        return path

    for server_round in range(1, run.num_server_rounds + 1):
        started = time.perf_counter()
        log.info("round_start", round=server_round, lr=run.round_lr(server_round))
        replies = grid.send_and_receive(strategy.configure_train(server_round, arrays, ConfigRecord(), grid),
                                        timeout=run.round_timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is None:
            raise RuntimeError(f"round {server_round}: no node returned a usable update: {strategy.dropped[server_round]}")
        arrays = new_arrays
        client_eval = None
        if messages := strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid):
            client_eval = strategy.aggregate_evaluate(server_round, grid.send_and_receive(messages, timeout=run.round_timeout))
        summary = {"round": server_round, "lr": run.round_lr(server_round)}
        if strategy.is_eval_round(server_round):
            server_metrics = server.evaluate(arrays.to_torch_state_dict(), stats)
            outputs.record_server_eval(server_round, server_metrics)
            summary["server-eval-loss"] = server_metrics["eval-loss"]
        per_node = replies_seen.get(server_round, {})
        nodes.update(per_node)
        summary |= {
            "wall-seconds": time.perf_counter() - started,
            "train-loss": float(train_metrics["train-loss"]),
            "client-eval-loss": float(client_eval["eval-loss"]) if client_eval else None,
            "nodes": {name: {"train-loss": m.get("train", {}).get("train-loss"),
                             "eval-loss": m.get("evaluate", {}).get("eval-loss"),
                             "samples": m.get("train", {}).get("num-examples"),
                             "compute-seconds": m.get("train", {}).get("compute-seconds"),
                             "bytes-received": m.get("train", {}).get("bytes-received"),
                             "bytes-sent": m.get("train", {}).get("bytes-sent")} for name, m in per_node.items()},
            "dropped": strategy.dropped.get(server_round, []),
        }
        summary["max-compute-seconds"] = max((n["compute-seconds"] or 0 for n in summary["nodes"].values()), default=0)
        outputs.record_round(summary)
        log.info("round_done", **{k: v for k, v in summary.items() if k != "nodes"})
        last_round = server_round
        stop = "server-eval-loss" in summary and early_stop.should_stop(summary["server-eval-loss"])
        if should_checkpoint(server_round, run, stop):
            final = checkpoint(server_round, {"server-eval-loss": outputs.server_eval.get(server_round),
                                              "train-loss": summary["train-loss"]})
        if stop:
            log.info("early_stop", round=server_round, best=early_stop.best)
            break

    outputs.write_history_and_charts()
    if should_push(run):
        push_checkpoint(final, run.hf_repo_id)
    elif run.hf_repo_id:
        log.info("hub_push_skipped", why=f"num-server-rounds {run.num_server_rounds} < checkpoint-interval {run.checkpoint_interval}")
    log.info("run_done", rounds=last_round, outputs=str(outputs.root), final_checkpoint=str(final),
             server_eval=outputs.server_eval)
