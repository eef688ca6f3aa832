"""A federated run, round by round: the one place where a round reads top to bottom.

Round r: wait for the nodes and sample them, send them the global model (`send_train`), take their replies in as
they arrive, screening each and folding it into the round's aggregate (`collect_train`), and the aggregate becomes
the new global model. Then the server's own work on it (`finish_round`): every `eval-frequency` rounds its
evaluation on the server's held-out dataset, the round's record, every `checkpoint-interval` rounds a checkpoint,
and the resume state. That work runs once round r+1's messages are out, while the nodes train, so it adds nothing
to a round's wall time unless it takes longer than the nodes; a round is done (and a run carried on after a crash
starts after it) once its resume state is sealed. The strategy (app.federation.strategy) holds the arithmetic:
messages, screening, aggregation.

What Flower's own loop (`strategy.start`) does not have, each a named step here: the nodes' evaluation of the
global model rides in the next round's train replies (`awaiting_client_eval`); early stop; resume; streaming
aggregation; replies that never came (drop-outs).
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from app.common import metrics
from app.common.config import RunConfig
from app.common.errors import ConfigError
from app.common.telemetry import get_logger
from app.federation.exchange import Exchange, send_and_receive, wait_for_nodes
from app.federation.global_model import GlobalModel
from app.federation.resume import LATEST, RoundState, load_round_state, mark_finished, save_round_state
from app.federation.strategy import FedVLA
from app.learning.checkpoint import latest_checkpoint
from app.learning.hub import push_checkpoint, should_push
from app.learning.learner import federated_stats
from app.learning.report import round_summary

log = get_logger(__name__)


def federate(grid: Grid, run: RunConfig, outputs, run_config: dict, run_id: int = 0) -> None:
    Federation(grid, run, outputs, run_config, run_id).run()


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


class Federation:
    """One run of the ServerApp: its global model, its strategy, its outputs, and the loop over its rounds.
    Everything that can be wrong with the config, the model or the server's evaluation dataset fails here, before
    round 1."""

    def __init__(self, grid: Grid, run: RunConfig, outputs, run_config: dict, run_id: int = 0):
        if should_push(run) and not os.environ.get("HF_TOKEN"):
            raise ConfigError(f"hf-repo-id={run.hf_repo_id!r} asks for a Hub push, but HF_TOKEN is not set where the "
                              "ServerApp runs (the SuperLink's environment): set it, or clear hf-repo-id")
        self.grid, self.config, self.outputs, self.run_id = grid, run, outputs, run_id
        self.model = GlobalModel.build(run)
        self.early_stop = EarlyStop(run.early_stop_patience, run.early_stop_min_delta)
        self.stats, self.first_round, server_optimizer_state = self._start()
        self.node_datasets: dict[int, str] = {}  # node id -> dataset; kept by id, as names may clash
        self.replies: dict[int, dict[int, dict]] = {}  # round -> node id -> kind -> metrics
        self.strategy = FedVLA(run, self.model.fingerprint, self.stats, self.model.arrays(), self._on_replies)
        if self.strategy.server_optimizer is not None:
            self.strategy.server_optimizer.load_state(server_optimizer_state)
        self.tracker = None
        if run.use_wandb:
            from app.common.tracking import WandbTracker

            self.tracker = WandbTracker(outputs.root, run_config, name=outputs.root.name)
        # re-summarizes the last round once the nodes' evaluation of its model is in
        self.awaiting_client_eval = self._interrupted_round_eval(self.first_round - 1)
        self.final = latest_checkpoint(outputs.models)  # an interrupted run may have nothing left to train
        self.rounds_done = self.first_round - 1

    def run(self) -> None:
        """Every round, then the run's history, charts, Hub push and end mark."""
        run = self.config
        arrays = self.model.arrays()
        self._evaluate_initial(arrays)
        # A round: send the global model, finish the last round's server work while the nodes train on it, then
        # take the replies in and aggregate them. With early stopping on, the last round's evaluation decides
        # whether this round happens at all, so it is finished before the send instead.
        previous: RoundEnd | None = None
        for server_round in range(self.first_round, run.num_server_rounds + 1):
            if previous is not None and self.early_stop.patience:
                stopped, previous = self.finish_round(previous), None
                if stopped:
                    break
            started = time.perf_counter()
            log.info("round_start", round=server_round, lr=run.round_lr(server_round))
            try:
                training, sent = self.send_train(server_round, arrays)
            except Exception:  # no round r (too few nodes left, say): round r - 1 still gets its record, checkpoint
                if previous is not None:
                    self.finish_round(previous)
                raise
            if previous is not None:
                previous.next_round_sent = started
                self.finish_round(previous)
            arrays, train_metrics = self.collect_train(server_round, training)
            previous = RoundEnd(server_round, started, arrays, train_metrics, sent)
        if previous is not None:
            self.finish_round(previous)
        self._close()

    # --- the steps of a round, in order ---

    def send_train(self, server_round: int, arrays: ArrayRecord) -> tuple[Exchange, int]:
        """The round's train messages out to the sampled nodes; returns the exchange and how many were sent."""
        messages = self.strategy.configure_train(server_round, arrays, ConfigRecord(), self.grid)
        self.strategy.open_train_round(server_round)
        return Exchange(self.grid, messages, self.config.round_timeout), len(messages)

    def collect_train(self, server_round: int, training: Exchange) -> tuple[ArrayRecord, object]:
        """The replies in, each screened and folded in as it arrives; returns the new global arrays. Nodes that sent
        nothing by the deadline are dropped from the round; too few usable updates end the run."""
        self.strategy.missing("train", server_round, training.collect(self.strategy.receive_train))
        arrays, train_metrics = self.strategy.close_train_round()
        if arrays is None:
            run = self.config
            raise RuntimeError(f"round {server_round}: fewer than {self.strategy.replies_needed} usable updates "
                               f"(min-replies={run.min_replies}; aggregation={run.aggregation} needs "
                               f"{run.updates_needed}): {self.strategy.dropped[server_round]}")
        if self.awaiting_client_eval is not None:  # these replies carried the evaluation of the last round's model
            self._complete(self.awaiting_client_eval())
            self.awaiting_client_eval = None
        return arrays, train_metrics

    def finish_round(self, end: RoundEnd) -> bool:
        """The server's own work on a round's global model: its evaluation, the final model's evaluate messages,
        the round's record, checkpoint and resume state. Returns whether the run stops early after it."""
        run, outputs, strategy = self.config, self.outputs, self.strategy
        server_round, arrays = end.server_round, end.arrays
        planned_last = server_round == run.num_server_rounds
        final_eval = self._send_final_evaluate(server_round, arrays) if planned_last else None  # beside the server's
        server_started = time.perf_counter()
        server_eval = None
        if strategy.is_eval_round(server_round):
            server_eval = self.model.evaluate(arrays, self.stats)
            outputs.record_server_eval(server_round, server_eval)
        server_work = {"server-eval-seconds": time.perf_counter() - server_started}
        stop = server_eval is not None and self.early_stop.should_stop(server_eval["eval-loss"])
        if server_eval is not None:
            metrics.record_server_evaluation(self.run_id, self.early_stop.stale)
        if stop and not planned_last:  # no next round will carry the final model's evaluation
            final_eval = self._send_final_evaluate(server_round, arrays)
        if final_eval is not None:
            replies: list[Message] = []
            strategy.missing("evaluate", server_round, final_eval.collect(replies.append))
            strategy.aggregate_evaluate(server_round, replies)
        wall_seconds = (end.next_round_sent or time.perf_counter()) - end.started
        summarize = functools.partial(self._summarize, server_round, wall_seconds, end.train_metrics, server_eval,
                                      server_work)
        summary = summarize()
        metrics.record_server_round(self.run_id, summary, run.num_server_rounds, end.messages_sent)
        if should_checkpoint(server_round, run, stop):
            self.final, server_work["checkpoint-seconds"] = self.model.save_checkpoint(
                arrays, self.stats, outputs, summary, outputs.nodes.labelled(self.node_datasets),
                self.tracker.url if self.tracker else None)
            metrics.record_checkpoint(self.run_id, server_round, server_work["checkpoint-seconds"])
            summary = summarize()
        if strategy.is_eval_round(server_round) and not (stop or planned_last):
            outputs.record_round(summary)  # on disk now; completed when the next round's replies bring client eval
            self.awaiting_client_eval = summarize
        else:
            self._complete(summary)
        early = self.early_stop
        save_round_state(outputs.root, RoundState(server_round, self.stats, early.best, early.stale),
                         arrays.to_torch_state_dict(),
                         strategy.server_optimizer.state() if strategy.server_optimizer is not None else None)
        self.rounds_done = server_round
        log.info("round_done", **{k: v for k, v in summary.items() if k != "nodes"})  # sealed: a resume goes on
        if stop:
            log.info("early_stop", round=server_round, best=early.best)
        return stop

    # --- the run's start and end ---

    def _start(self) -> tuple[dict, int, dict]:
        """The federation's normalization stats, the first round to train and the server optimizer's saved state:
        an interrupted run of this output directory carries on after its last completed round; otherwise the
        nodes are asked for their stats, and `resume-from` may name a checkpoint to start from (weights only)."""
        saved = load_round_state(self.outputs.root) if self.config.resume_from == LATEST else None
        if saved is None:
            stats = collect_federated_stats(self.grid, self.config, self.model.fingerprint)
            return stats, self.model.resume_from_checkpoint() + 1, {}
        state, saved_arrays, saved_optimizer = saved
        self.model.load(saved_arrays)
        self.early_stop.best, self.early_stop.stale = state.best_loss, state.stale
        log.info("run_continued", rounds_done=state.round, outputs=str(self.outputs.root),
                 server_optimizer_state=bool(saved_optimizer), weights_digest=self.model.digest())
        return state.norm_stats, state.round + 1, saved_optimizer

    def _evaluate_initial(self, arrays: ArrayRecord) -> None:
        """The starting model's server eval loss: the first point of every chart (kept from before an interruption)."""
        before, outputs = self.first_round - 1, self.outputs
        if before in outputs.server_eval:
            initial = {"eval-loss": outputs.server_eval[before]}
        else:
            initial = self.model.evaluate(arrays, self.stats)
            outputs.record_server_eval(before, initial)
        metrics.record_server_start(self.run_id, self.config.num_server_rounds, initial["eval-loss"],
                                    self.first_round, self.config.checkpoint_interval)
        if self.tracker is not None:
            self.tracker.log_initial(initial["eval-loss"], before)

    def _close(self) -> None:
        outputs = self.outputs
        outputs.write_history_and_charts()
        if self.tracker is not None:
            self.tracker.finish()
        push_final_checkpoint(self.config, self.final)
        mark_finished(outputs.root)
        log.info("run_done", rounds=self.rounds_done, outputs=str(outputs.root), final_checkpoint=str(self.final),
                 server_eval=outputs.server_eval)

    # --- what a round's steps share ---

    def _on_replies(self, kind: str, server_round: int, reports) -> None:
        for rep in reports:  # every name first: two nodes of one round that share a name both get their id shown
            self.outputs.nodes.add(rep.node_id, rep.name)
        for rep in reports:
            self.outputs.record_client_reply(kind, server_round, rep.name, rep.node_id, rep.dataset, rep.metrics)
            self.replies.setdefault(server_round, {}).setdefault(rep.node_id, {})[kind] = rep.metrics
            self.node_datasets[rep.node_id] = rep.dataset

    def _summarize(self, server_round: int, wall_seconds: float, train_metrics, server_eval,
                   server_work: dict) -> dict:
        strategy = self.strategy
        return round_summary(
            server_round, self.config.round_lr(server_round), wall_seconds, train_metrics,
            strategy.client_eval.get(server_round), server_eval,
            self.outputs.nodes.labelled(self.replies.get(server_round, {})), strategy.dropped.get(server_round, []),
            server_work, strategy.traffic[server_round],
        )

    def _complete(self, summary: dict) -> None:
        self.outputs.record_round(summary)
        if self.tracker is not None:
            self.tracker.log_round(summary)

    def _send_final_evaluate(self, server_round: int, arrays: ArrayRecord) -> Exchange | None:
        """Evaluate messages for the run's final global model (no later train message carries it); "final" tells
        the nodes' warm workers to free the run's policy once they have answered. None when no node is left to
        ask: the trained model still gets its checkpoint."""
        try:
            messages = self.strategy.configure_evaluate(server_round, arrays, ConfigRecord({"final": True}),
                                                        self.grid)
        except TimeoutError as exc:
            log.error("final_client_eval_skipped", round=server_round, why=str(exc))
            return None
        return Exchange(self.grid, messages, self.config.round_timeout)

    def _interrupted_round_eval(self, server_round: int):
        """For a run carried on after round `server_round`: if that round's summary on disk still waits for the
        nodes' evaluation of its model (which the next train replies bring), a function completing it; else None."""
        outputs, strategy = self.outputs, self.strategy
        recorded = next((r for r in outputs.rounds if r["round"] == server_round), None)
        if recorded is None or recorded.get("client-eval-loss") is not None or not strategy.is_eval_round(server_round):
            return None

        def complete() -> dict:
            summary = {**recorded, "nodes": {name: dict(node) for name, node in recorded["nodes"].items()}}
            summary["client-eval-loss"] = strategy.client_eval.get(server_round, {}).get("eval-loss")
            for node_id, kinds in self.replies.get(server_round, {}).items():
                if "evaluate" in kinds and outputs.nodes.label(node_id) in summary["nodes"]:
                    summary["nodes"][outputs.nodes.label(node_id)]["eval-loss"] = kinds["evaluate"]["eval-loss"]
            return summary

        return complete


def collect_federated_stats(grid: Grid, run: RunConfig, fingerprint: str) -> dict[str, list[float]]:
    """Ask the connected nodes for their state/action stats and merge them: one normalization for the whole
    federation. With `stats-fraction` below 1 only a seeded sample of them is asked (at least min-train-nodes): the
    merged stats are then an estimate from that sample's frames, and the query costs a sample's messages, not one
    per connected node."""
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
        raise RuntimeError(f"only {len(good)} node(s) are usable, min-train-nodes={run.min_train_nodes}; see node "
                           "errors above")
    return federated_stats([dict(r.content["norm-stats"]) for r in good])


def push_final_checkpoint(run: RunConfig, final) -> None:
    """Push the last checkpoint to the Hub when the run asks; a failure is logged with the command to retry, as the
    run's result is safe on disk."""
    if should_push(run):
        try:
            push_checkpoint(final, run.hf_repo_id, private=run.hf_private)
        except Exception as exc:
            visibility = "--private" if run.hf_private else "--public"
            log.error("hub_push_failed", repo_id=run.hf_repo_id, error=f"{type(exc).__name__}: {exc}",
                      retry=f"fedvla push {final} --repo-id {run.hf_repo_id} {visibility}")
    elif run.hf_repo_id:
        log.info("hub_push_skipped", why=f"num-server-rounds {run.num_server_rounds} < checkpoint-interval "
                                         f"{run.checkpoint_interval}")
