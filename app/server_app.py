"""ServerApp: run-config -> federation stats -> FedProx rounds -> server evaluation, checkpoints, reports.

Round r: the strategy sends the global trainable arrays to the sampled nodes, which train locally and reply;
their sample-weighted average becomes the new global model; every `eval-frequency` rounds the nodes evaluate
it on their held-out episodes and the server on its own held-out dataset. Checkpoints are written every
`checkpoint-interval` rounds and after the last round. The server's own work on round r's model (its evaluation,
checkpoint, record and resume state: `finish_round`) runs once round r+1's messages are out, while the nodes
train, so it adds nothing to a round's wall time unless it takes longer than the nodes; a round is done (and a run
carried on after a crash starts after it) once its resume state is sealed. Everything fails before round 1 if the
config, the model or the server's evaluation dataset is wrong.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from app.config import RunConfig
from app.resume import LATEST
from app.telemetry import configure_logging, get_logger

log = get_logger(__name__)
app = ServerApp()


REPLY_POLL_SECONDS = 0.25


def pull_replies(grid: Grid, message_ids: set[str]) -> list[Message]:
    """The replies that have come in, or none this time when the SuperLink answers with a server error: on a loaded
    machine its SQLite state can stay locked past Flower's 5 s busy timeout ("database is locked"), and a pull that
    failed delivered nothing, so the next poll asks again. Other errors end the run as before."""
    import httpx

    try:
        return list(grid.pull_messages(message_ids))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code < 500:
            raise
        log.warning("superlink_busy", status=exc.response.status_code, url=str(exc.request.url),
                    then="asking again at the next poll")
        return []


class Exchange:
    """Messages out, their replies in: `Grid.send_and_receive` in two halves, so the server can do its own work (the
    last round's evaluation and checkpoint) while the nodes work on the messages. `collect` hands each reply to
    `on_reply` as it arrives (so a round's replies need not all be in memory at once), looking for replies every
    REPLY_POLL_SECONDS instead of Flower's 3 s, which would add 1.5 s on average to every round of a few seconds."""

    def __init__(self, grid: Grid, messages: list[Message], timeout: float):
        self.grid, self.sent = grid, len(messages)
        self.started = time.monotonic()
        self.deadline = self.started + timeout  # from the send: the server's own work counts against it
        self.pending: dict[str, int] = {}  # message id -> node id
        self.unsent: list[int] = []
        self.push(messages)

    def push(self, batch: list[Message]) -> None:
        message_ids = list(self.grid.push_messages(batch))  # in the order of `batch`; None where a push failed
        for mid, msg in zip(message_ids, batch, strict=True):
            if mid is None:
                self.unsent.append(msg.metadata.dst_node_id)
            else:
                self.pending[mid] = msg.metadata.dst_node_id

    def collect(self, on_reply: Callable[[Message], Message | None]) -> list[int]:
        """Hand replies to `on_reply` until all are in or the deadline passes; a message `on_reply` returns is sent
        in the reply's place, within the same deadline. Returns the ids of the nodes that sent no reply in time (a
        node that is gone replies with an error once Flower's heartbeat notices)."""
        received = 0
        while self.pending and time.monotonic() < self.deadline:
            time.sleep(REPLY_POLL_SECONDS)
            for reply in pull_replies(self.grid, set(self.pending)):
                self.pending.pop(reply.metadata.reply_to_message_id, None)
                received += 1
                if (follow_up := on_reply(reply)) is not None:
                    self.push([follow_up])
        log.info("replies_received", sent=self.sent, received=received,
                 seconds=round(time.monotonic() - self.started, 2))
        return sorted(self.unsent + list(self.pending.values()))


def send_and_receive(grid: Grid, messages: list[Message], timeout: float,
                     on_reply: Callable[[Message], Message | None]) -> list[int]:
    """Both halves of an Exchange at once, for messages the server has nothing to do beside."""
    return Exchange(grid, messages, timeout).collect(on_reply)


def collect_federated_stats(grid: Grid, run: RunConfig, fingerprint: str) -> dict[str, list[float]]:
    """Ask the connected nodes for their state/action stats and merge them: one normalization for the whole
    federation. With `stats-fraction` below 1 only a seeded sample of them is asked (at least min-train-nodes): the
    merged stats are then an estimate from that sample's frames, and the query costs a sample's messages, not one
    per connected node."""
    import random

    from app.node import federated_stats

    from app.strategy import wait_for_nodes

    connected = wait_for_nodes(grid, run.min_available_nodes, run.node_wait_timeout)
    wanted = min(len(connected), max(math.ceil(len(connected) * run.stats_fraction), run.min_train_nodes))
    node_ids = sorted(random.Random(run.seed).sample(sorted(connected), wanted))
    if wanted < len(connected):
        log.info("stats_sampled", asked=wanted, connected=len(connected), stats_fraction=run.stats_fraction)
    content = RecordDict({"config": ConfigRecord({"base-fingerprint": fingerprint})})
    messages = [Message(content=content, dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
    replies: list[Message] = []
    send_and_receive(grid, messages, run.round_timeout, replies.append)
    good = [r for r in replies if not r.has_error()]
    for reply in replies:
        if reply.has_error():
            log.error("node_refused", node_id=reply.metadata.src_node_id, why=reply.error.reason)
    if len(good) < run.min_train_nodes:
        raise RuntimeError(f"only {len(good)} node(s) are usable, min-train-nodes={run.min_train_nodes}; see node errors above")
    return federated_stats([dict(r.content["norm-stats"]) for r in good])


@dataclass
class RoundEnd:
    """A round whose replies are aggregated, waiting for the server's own work on its model (`finish_round`)."""

    server_round: int
    started: float  # perf_counter when its messages were sent
    arrays: ArrayRecord  # the new global model
    train_metrics: object
    messages_sent: int
    next_round_sent: float | None = None  # the round's wall time ends here when the next round overlaps its end


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


def resume(server, run: RunConfig) -> int:
    """Load the global weights of `resume-from` into the server's policy; returns the rounds already done (0 if
    starting fresh). The round count, the learning-rate schedule and checkpoint numbering carry on from there."""
    from app import model as models
    from app.checkpoint import checkpoint_round, usable_checkpoint
    from app.errors import ConfigError

    if run.resume_from in ("", LATEST):  # "latest" carries on an interrupted run from its own state (app.resume)
        return 0
    directory = usable_checkpoint(Path(run.resume_from).expanduser())  # a corrupt one: the previous, said in the log
    done = checkpoint_round(directory)
    if done >= run.num_server_rounds:
        raise ConfigError(f"resume-from is at round {done}; set num-server-rounds above it to train more")
    saved = models.build_policy(str(directory), server.config)
    if models.frozen_fingerprint(saved) != server.fingerprint:
        raise ConfigError(f"resume-from {str(directory)!r} was trained from another base model than model={run.model!r}")
    models.load_trainable_state(server.policy, models.trainable_state(saved))
    log.info("resumed", checkpoint=str(directory), rounds_done=done)
    return done


@app.main()
def main(grid: Grid, context: Context) -> None:
    from app.report import RunOutputs

    from app.resume import find_unfinished_run

    run = RunConfig.from_mapping(context.run_config)
    interrupted = find_unfinished_run(Path(run.output_dir), context.run_config) if run.resume_from == LATEST else None
    if interrupted is not None:
        outputs = RunOutputs.reopen(interrupted, run_id=context.run_id)
    else:
        outputs = RunOutputs.create(Path(run.output_dir), context.run_config, run_id=context.run_id)
    configure_logging(log_file=outputs.run_log, app_log_file=outputs.server_log)
    log.info("run_start", outputs=str(outputs.root), run_config=dict(context.run_config),
             continues=interrupted is not None)
    try:
        federate(grid, run, outputs, dict(context.run_config), context.run_id)
    except Exception:
        log.exception("run_failed", outputs=str(outputs.root))
        raise


def send_final_evaluate(grid: Grid, strategy, server_round: int, arrays: ArrayRecord,
                        timeout: float) -> Exchange | None:
    """Evaluate messages for the run's final global model (no later train message carries it); "final" tells the
    nodes' warm workers to free the run's policy once they have answered. None when no node is left to ask: the
    trained model still gets its checkpoint."""
    try:
        messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord({"final": True}), grid)
    except TimeoutError as exc:
        log.error("final_client_eval_skipped", round=server_round, why=str(exc))
        return None
    return Exchange(grid, messages, timeout)


def receive_final_evaluate(strategy, server_round: int, exchange: Exchange) -> None:
    replies: list[Message] = []
    strategy.missing("evaluate", server_round, exchange.collect(replies.append))
    strategy.aggregate_evaluate(server_round, replies)


def save_round_checkpoint(server, stats: dict, arrays: ArrayRecord, outputs, summary: dict,
                          node_datasets: dict[str, str], tracker_url: str | None) -> tuple[Path, float]:
    """The global model after `summary`'s round as a LeRobot checkpoint with its processors and model card.
    Returns its path and the seconds it took."""
    import tempfile

    from app import model as models
    from app.checkpoint import LOSS_CHART, save_checkpoint

    started = time.perf_counter()
    server_round = summary["round"]
    models.load_trainable_state(server.policy, arrays.to_torch_state_dict())
    preprocessor, postprocessor = server.processors(stats)
    path = outputs.models / f"checkpoint_round_{server_round}"
    card = outputs.model_card(server.run, server_round, node_datasets, summary, tracker_url, chart=True)
    checkpoint_metrics = {"round": server_round, "server-eval-loss": outputs.server_eval.get(server_round),
                          "train-loss": summary["train-loss"], "nodes": node_datasets}
    with tempfile.TemporaryDirectory() as scratch:
        chart = outputs.loss_chart(Path(scratch) / LOSS_CHART)
        save_checkpoint(path, server.policy, preprocessor, postprocessor, checkpoint_metrics, card, {LOSS_CHART: chart})
    log.info("checkpoint_saved", round=server_round, path=str(path))
    return path, time.perf_counter() - started


def interrupted_round_eval(outputs, strategy, replies: dict, server_round: int):
    """For a run carried on after round `server_round`: if that round's summary on disk still waits for the nodes'
    evaluation of its model (which the next train replies bring), a function completing it; else None."""
    recorded = next((r for r in outputs.rounds if r["round"] == server_round), None)
    if recorded is None or recorded.get("client-eval-loss") is not None or not strategy.is_eval_round(server_round):
        return None

    def complete() -> dict:
        summary = {**recorded, "nodes": {name: dict(node) for name, node in recorded["nodes"].items()}}
        summary["client-eval-loss"] = strategy.client_eval.get(server_round, {}).get("eval-loss")
        for node_id, kinds in replies.get(server_round, {}).items():
            if "evaluate" in kinds and outputs.nodes.label(node_id) in summary["nodes"]:
                summary["nodes"][outputs.nodes.label(node_id)]["eval-loss"] = kinds["evaluate"]["eval-loss"]
        return summary

    return complete


def push_final_checkpoint(run: RunConfig, final: Path) -> None:
    """Push the last checkpoint to the Hub when the run asks; a failure is logged with the command to retry, as the
    run's result is safe on disk."""
    from app.hub import push_checkpoint, should_push

    if should_push(run):
        try:
            push_checkpoint(final, run.hf_repo_id, private=run.hf_private)
        except Exception as exc:
            visibility = "--private" if run.hf_private else "--public"
            log.error("hub_push_failed", repo_id=run.hf_repo_id, error=f"{type(exc).__name__}: {exc}",
                      retry=f"fedvla push {final} --repo-id {run.hf_repo_id} {visibility}")
    elif run.hf_repo_id:
        log.info("hub_push_skipped", why=f"num-server-rounds {run.num_server_rounds} < checkpoint-interval {run.checkpoint_interval}")


def federate(grid: Grid, run: RunConfig, outputs, run_config: dict, run_id: int = 0) -> None:
    from app import metrics
    from app import model as models
    from app.errors import ConfigError
    from app.hub import should_push
    from app.node import Learner
    from app.report import round_summary
    from app.checkpoint import latest_checkpoint
    from app.resume import RoundState, load_round_state, mark_finished, save_round_state
    from app.strategy import FedVLA

    if should_push(run) and not os.environ.get("HF_TOKEN"):
        raise ConfigError(f"hf-repo-id={run.hf_repo_id!r} asks for a Hub push, but HF_TOKEN is not set where the "
                          "ServerApp runs (the SuperLink's environment): set it, or clear hf-repo-id")
    server = Learner(run, run.server_eval_dataset, evaluation_only=True)  # the global model; all of its eval data
    early_stop = EarlyStop(run.early_stop_patience, run.early_stop_min_delta)
    saved = load_round_state(outputs.root) if run.resume_from == LATEST else None
    if saved is not None:  # an interrupted run of this directory: carry on after its last completed round
        state, saved_arrays, saved_optimizer = saved
        models.load_trainable_state(server.policy, saved_arrays)
        stats, first_round = state.norm_stats, state.round + 1
        early_stop.best, early_stop.stale = state.best_loss, state.stale
        log.info("run_continued", rounds_done=state.round, outputs=str(outputs.root),
                 server_optimizer_state=bool(saved_optimizer),
                 weights_digest=models.tensors_digest(models.trainable_state(server.policy)))
    else:
        stats = collect_federated_stats(grid, run, server.fingerprint)
        first_round, saved_optimizer = resume(server, run) + 1, {}  # resume-from a checkpoint: weights only
    node_datasets: dict[int, str] = {}  # node id -> dataset; a node's data is kept by id, as names may clash
    replies: dict[int, dict[int, dict]] = {}  # round -> node id -> kind -> metrics

    def on_replies(kind, server_round, reports):
        for rep in reports:  # every name first: two nodes of one round that share a name both get their id shown
            outputs.nodes.add(rep.node_id, rep.name)
        for rep in reports:
            outputs.record_client_reply(kind, server_round, rep.name, rep.node_id, rep.dataset, rep.metrics)
            replies.setdefault(server_round, {}).setdefault(rep.node_id, {})[kind] = rep.metrics
            node_datasets[rep.node_id] = rep.dataset

    arrays = ArrayRecord(models.trainable_state(server.policy))
    strategy = FedVLA(run, server.fingerprint, stats, arrays, on_replies)
    if strategy.server_optimizer is not None:
        strategy.server_optimizer.load_state(saved_optimizer)
    if first_round - 1 in outputs.server_eval:  # evaluated before the interruption
        initial = {"eval-loss": outputs.server_eval[first_round - 1]}
    else:
        initial = server.evaluate(arrays.to_torch_state_dict(), stats)
        outputs.record_server_eval(first_round - 1, initial)
    metrics.record_server_start(run_id, run.num_server_rounds, initial["eval-loss"], first_round)
    tracker = None
    if run.use_wandb:
        from app.tracking import WandbTracker

        tracker = WandbTracker(outputs.root, run_config, name=outputs.root.name)
        tracker.log_initial(initial["eval-loss"], first_round - 1)

    def summarize(server_round: int, wall_seconds: float, train_metrics, server_eval, server_work: dict) -> dict:
        return round_summary(
            server_round, run.round_lr(server_round), wall_seconds, train_metrics, strategy.client_eval.get(server_round),
            server_eval, outputs.nodes.labelled(replies.get(server_round, {})), strategy.dropped.get(server_round, []),
            server_work, strategy.traffic[server_round],
        )

    def complete(summary: dict) -> None:
        outputs.record_round(summary)
        if tracker is not None:
            tracker.log_round(summary)

    # re-summarizes the last round once the nodes' evaluation of its model is in
    awaiting_client_eval = interrupted_round_eval(outputs, strategy, replies, first_round - 1)
    final = latest_checkpoint(outputs.models)  # an interrupted run may have nothing left to train
    rounds_done = first_round - 1

    def finish_round(end: RoundEnd) -> bool:
        """The server's own work on a round's global model: its evaluation, the final model's evaluate messages,
        the round's record, checkpoint and resume state. Returns whether the run stops early after it."""
        nonlocal awaiting_client_eval, final, rounds_done
        server_round, arrays = end.server_round, end.arrays
        planned_last = server_round == run.num_server_rounds
        final_eval = None
        if planned_last:  # the nodes evaluate the final model while the server does
            final_eval = send_final_evaluate(grid, strategy, server_round, arrays, run.round_timeout)
        server_started = time.perf_counter()
        server_eval = None
        if strategy.is_eval_round(server_round):
            server_eval = server.evaluate(arrays.to_torch_state_dict(), stats)
            outputs.record_server_eval(server_round, server_eval)
        server_work = {"server-eval-seconds": time.perf_counter() - server_started}
        stop = server_eval is not None and early_stop.should_stop(server_eval["eval-loss"])
        if stop and not planned_last:  # no next round will carry the final model's evaluation
            final_eval = send_final_evaluate(grid, strategy, server_round, arrays, run.round_timeout)
        if final_eval is not None:
            receive_final_evaluate(strategy, server_round, final_eval)
        wall_seconds = (end.next_round_sent or time.perf_counter()) - end.started
        summary = summarize(server_round, wall_seconds, end.train_metrics, server_eval, server_work)
        metrics.record_server_round(run_id, summary, run.num_server_rounds, end.messages_sent)
        if should_checkpoint(server_round, run, stop):
            final, server_work["checkpoint-seconds"] = save_round_checkpoint(
                server, stats, arrays, outputs, summary, outputs.nodes.labelled(node_datasets),
                tracker.url if tracker else None)
            metrics.record_checkpoint(run_id, server_round, server_work["checkpoint-seconds"])
            summary = summarize(server_round, wall_seconds, end.train_metrics, server_eval, server_work)
        if strategy.is_eval_round(server_round) and not (stop or planned_last):
            outputs.record_round(summary)  # on disk now; completed when the next round's replies bring client eval
            awaiting_client_eval = functools.partial(summarize, server_round, wall_seconds, end.train_metrics,
                                                     server_eval, server_work)
        else:
            complete(summary)
        save_round_state(outputs.root, RoundState(server_round, stats, early_stop.best, early_stop.stale),
                         arrays.to_torch_state_dict(),
                         strategy.server_optimizer.state() if strategy.server_optimizer is not None else None)
        rounds_done = server_round
        log.info("round_done", **{k: v for k, v in summary.items() if k != "nodes"})  # sealed: a resumed run goes on
        if stop:
            log.info("early_stop", round=server_round, best=early_stop.best)
        return stop

    # A round: send the global model, finish the last round's server work while the nodes train on it, then take
    # the replies in and aggregate them. With early stopping on, the last round's evaluation decides whether this
    # round happens at all, so it is finished before the send instead.
    previous: RoundEnd | None = None
    for server_round in range(first_round, run.num_server_rounds + 1):
        if previous is not None and early_stop.patience:
            stopped, previous = finish_round(previous), None
            if stopped:
                break
        started = time.perf_counter()
        log.info("round_start", round=server_round, lr=run.round_lr(server_round))
        try:
            train_messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
            strategy.open_train_round(server_round)
            training = Exchange(grid, train_messages, run.round_timeout)
        except Exception:  # no round r (too few nodes left, say): round r - 1 still gets its record and checkpoint
            if previous is not None:
                finish_round(previous)
            raise
        if previous is not None:
            previous.next_round_sent = started
            finish_round(previous)
        strategy.missing("train", server_round, training.collect(strategy.receive_train))
        new_arrays, train_metrics = strategy.close_train_round()
        if new_arrays is None:
            raise RuntimeError(f"round {server_round}: fewer than {strategy.replies_needed} usable updates "
                               f"(min-replies={run.min_replies}; aggregation={run.aggregation} needs "
                               f"{run.updates_needed}): {strategy.dropped[server_round]}")
        arrays = new_arrays
        if awaiting_client_eval is not None:  # these train replies carried the evaluation of the last round's model
            complete(awaiting_client_eval())
            awaiting_client_eval = None
        previous = RoundEnd(server_round, started, arrays, train_metrics, len(train_messages))
    if previous is not None:
        finish_round(previous)

    outputs.write_history_and_charts()
    if tracker is not None:
        tracker.finish()
    push_final_checkpoint(run, final)
    mark_finished(outputs.root)
    log.info("run_done", rounds=rounds_done, outputs=str(outputs.root), final_checkpoint=str(final),
             server_eval=outputs.server_eval)
