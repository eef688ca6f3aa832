"""Learning quality on the embedded default (issue 10, 4b and 4c): does an update encoding, or federating at all,
cost held-out loss?

    python -m bench.learning_quality [--rounds 24] [--local-steps 20] [--no-lever]
                                         -> bench/results/learning_quality.json    (about 13 min on 2 cores)

Four nodes (embedded:operator-0..3, one task family each, so non-IID), the same seeds for every run, batch 8 and lr
1e-3 (the embedded default) decaying per round to 1e-4. Every run starts from the same initial weights, normalizes
with the same federated stats (app.learning.learner.federated_stats of the four nodes' own, as the federation computes them) and
is scored by the same server Learner on embedded:server-eval (all four task families) after every round:

- (b) FedProx (proximal-mu 0.01) with update-encoding fp32, bf16, int8-delta and int4-delta: final server eval loss
  of each against fp32's. Target: within 1 %.
- (c) the same training episodes pooled (ConcatDataset of the four nodes' training splits) and trained standalone
  with app.learning.train.train for the same total optimizer steps (4 x rounds x local-steps), batch and learning-rate
  schedule: each round-equivalent chunk of 4 x local-steps steps at that round's learning rate, held constant as a
  node holds it. Target: FedProx within 3 % of centralized; FedAvg (proximal-mu 0) beside it.
- one lever: FedProx fp32 with twice the rounds and half the local steps (the same total steps).
- more levers, only when named with --only (LEVERS): a smaller mu, FedAvg with twice the rounds and half the local
  steps, Flower's server-side optimizers (FedAvgM, FedAdam, FedYogi) on each round's aggregate, and AdamW's moments
  kept on the nodes from one round to the next.
- a yardstick for (b): FedProx fp32 with seed + 1 (which also re-splits the nodes' held-out episodes): how far
  the final loss moves from a seed alone.

The federation runs in this process: FedVLA (configure_train, open_train_round, receive_train, close_train_round)
and app.federation.client_work.perform per node per round, each node with its own warm Learner and its own state (the codec's
reference and error-feedback residual), no gRPC. Transport does not change what is learned (the messages carry the
same records); the real-process federation is tested and timed elsewhere. eval-frequency is set to the number of
rounds so the nodes do not evaluate the received model every round (which changes nothing learned, and costs time);
the server evaluates every round here.

For speed, not for results: torch runs one intra-op thread (on a 2-core machine shared with other work, two
threads ran a training step 10x slower), and each dataset item is decoded once and kept (`Cached`: the items are
deterministic, so the losses are the same to the last digit; decoding video was most of an evaluation's time).
Seconds per run are therefore this bench's, not a federation's (bench.federated_rounds times the real one).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import time
from dataclasses import dataclass, field

from app.common.telemetry import configure_logging

NODES = 4
CACHE = True  # decode each dataset item once (see Cached)
CHUNK_ADAMW = "restarted per round-equivalent chunk, as each node restarts it every round"
HALF_STEPS = "-2x-rounds-half-steps"  # a lever's name ending so: twice the rounds, half the local steps
# Levers on federated vs centralized beyond the standard set, run only when named with --only: run-config overrides.
LEVERS = {
    "fedprox-mu0.001-fp32": {"proximal-mu": 0.001},
    "fedavg-fp32" + HALF_STEPS: {"proximal-mu": 0.0},
    # server-side optimizers on each round's aggregate (Flower's FedAvgM, FedAdam, FedYogi)
    "fedavgm-fp32": {"server-optimizer": "fedavgm", "server-momentum": 0.9},
    "fedadam-fp32": {"server-optimizer": "fedadam", "server-lr": 0.01},
    "fedyogi-fp32": {"server-optimizer": "fedyogi", "server-lr": 0.01},
    # AdamW's moments kept on each (warm) node from one round to the next
    "fedprox-keep-adamw-fp32": {"keep-optimizer-state": True},
}


class Cached:
    """A dataset's items, decoded once and kept: LeRobot's items are deterministic here (no image transforms), so
    this changes how long the bench takes (video decoding was most of an evaluation), not what is learned."""

    def __init__(self, inner):
        self.inner, self.items = inner, {}

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        if index not in self.items:
            self.items[index] = self.inner[index]
        return self.items[index]


@dataclass
class Setup:
    """What every run shares: the server's Learner and initial weights, the federated stats, the nodes' data."""

    rounds: int
    local_steps: int
    seed: int
    server: object = None
    evaluation_only: bool = False
    initial: dict = field(default_factory=dict)  # name -> np.ndarray, the global model before round 1
    stats: dict = field(default_factory=dict)
    initial_loss: float = 0.0
    node_learners: list = field(default_factory=list)  # each node's Learner, for its data

    def share_cache(self, learners, run_id: int, run_config: dict) -> None:
        """Give the nodes' Learners of a run the decoded items of their training splits (the same episodes)."""
        from app.common.config import NodeConfig, RunConfig

        if not CACHE:
            return
        run = RunConfig.from_mapping(run_config)
        for i, kept in enumerate(self.node_learners):
            learner, _ = learners.get(run_id, run, NodeConfig.from_mapping(node_config(i)))
            if learner.data.train_episodes == kept.data.train_episodes:  # another seed splits differently
                learner.data.train = kept.data.train

    def run_config(self, **overrides) -> dict:
        from app.common.config import EMBEDDED_OVERRIDES

        rounds = overrides.pop("num-server-rounds", self.rounds)
        return {**EMBEDDED_OVERRIDES, "num-server-rounds": rounds, "local-steps": self.local_steps,
                "proximal-mu": 0.01, "update-encoding": "fp32", "seed": self.seed,
                "min-train-nodes": NODES, "min-available-nodes": NODES,
                "eval-frequency": rounds, "checkpoint-interval": rounds, **overrides}

    def evaluate(self, arrays: dict) -> float:
        """Server eval loss of trainable `arrays` (name -> torch tensor)."""
        return self.server.evaluate(arrays, self.stats)["eval-loss"]


def node_config(i: int) -> dict:
    return {"dataset-uri": f"embedded:operator-{i}", "name": f"operator_{i}"}


def prepare(rounds: int, local_steps: int, seed: int) -> Setup:
    import numpy as np
    import torch
    from flwr.app import ConfigRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from app.learning import embedded
    from app.learning import model as models
    from app.common.config import NodeConfig, RunConfig
    from app.learning.learner import Learner, federated_stats
    from app.federation.client_work import QUERY, Learners, perform

    # Messages are stamped with the current run, as inside a ServerApp.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    embedded.ensure_base_model()
    embedded.ensure_server_eval_dataset()
    for i in range(NODES):
        embedded.ensure_operator_dataset(i)
    setup = Setup(rounds, local_steps, seed)
    run = RunConfig.from_mapping(setup.run_config())
    setup.evaluation_only = "evaluation_only" in inspect.signature(Learner.__init__).parameters
    kwargs = {"evaluation_only": True} if setup.evaluation_only else {}
    setup.server = Learner(run, run.server_eval_dataset, **kwargs)
    setup.initial = {k: np.array(v.cpu().numpy(), dtype=np.float32, copy=True)
                     for k, v in models.trainable_state(setup.server.policy).items()}
    # The federation's stats, exactly as the ServerApp gathers them: each node's query reply, merged.
    learners = Learners(capacity=NODES)
    query = RecordDict({"config": ConfigRecord({"base-fingerprint": setup.server.fingerprint})})
    replies = [perform(QUERY, 0, setup.run_config(), node_config(i), query, learners) for i in range(NODES)]
    setup.stats = federated_stats([dict(r["norm-stats"]) for r in replies])
    setup.node_learners = [learners.get(0, run, NodeConfig.from_mapping(node_config(i)))[0] for i in range(NODES)]
    if CACHE:
        setup.server.data.heldout = Cached(setup.server.data.heldout)
        for learner in setup.node_learners:
            learner.data.train = Cached(learner.data.train)
    setup.initial_loss = setup.evaluate({k: torch.from_numpy(v) for k, v in setup.initial.items()})
    return setup


class Grid:
    """All a strategy asks of the grid here: which nodes are connected."""

    def get_node_ids(self):
        return list(range(1, NODES + 1))


def reply_message(node_id: int, content):
    from flwr.app import Message, Metadata

    return Message(content=content, metadata=Metadata(
        run_id=1, message_id="", src_node_id=node_id, dst_node_id=0, reply_to_message_id=f"m{node_id}",
        group_id="1", created_at=time.time(), ttl=600, message_type="train"))


def federated(setup: Setup, label: str, run_id: int, **overrides) -> dict:
    """One federation, in-process: per round, the strategy's train messages, each node's perform(), the streamed
    aggregation, and the server's evaluation of the new global model."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from app.federation import codec, wire
    from app.common.config import RunConfig
    from app.federation.strategy import FedVLA
    from app.federation.client_work import TRAIN, Learners, perform

    run_config = setup.run_config(**overrides)
    run = RunConfig.from_mapping(run_config)
    arrays = wire.encode(codec.FP32, setup.initial)
    strategy = FedVLA(run, setup.server.fingerprint, setup.stats, arrays)
    learners = Learners(capacity=NODES)
    states = {n: RecordDict() for n in Grid().get_node_ids()}  # each node's memory between the run's messages
    configs = {n: node_config(n - 1) for n in states}
    setup.share_cache(learners, run_id, run_config)
    started = time.perf_counter()
    curve, train_loss, rounds = [setup.initial_loss], [], []
    for server_round in range(1, run.num_server_rounds + 1):
        round_started = time.perf_counter()
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), Grid())
        strategy.open_train_round(server_round)
        for message in sorted(messages, key=lambda m: m.metadata.dst_node_id):  # a fixed order: same float sums
            node = message.metadata.dst_node_id
            content = perform(TRAIN, run_id, run_config, configs[node], message.content, learners, state=states[node])
            strategy.receive_train(reply_message(node, content))
        new_arrays, metrics = strategy.close_train_round()
        if new_arrays is None:
            raise RuntimeError(f"{label} round {server_round}: no usable update: {strategy.dropped[server_round]}")
        arrays = new_arrays
        curve.append(setup.evaluate(arrays.to_torch_state_dict()))
        train_loss.append(float(metrics["train-loss"]))
        rounds.append({"round": server_round, "lr": run.round_lr(server_round), "train-loss": train_loss[-1],
                       "server-eval-loss": curve[-1], "seconds": time.perf_counter() - round_started,
                       **strategy.traffic[server_round]})
        print(f"  {label} round {server_round}: server eval loss {curve[-1]:.4f} "
              f"({time.perf_counter() - round_started:.1f} s)", flush=True)
    learners.release()
    return {"kind": "federated", "update-encoding": run.update_encoding, "proximal-mu": run.proximal_mu,
            "server-optimizer": run.server_optimizer, "server-lr": run.server_step,
            "server-momentum": run.server_momentum, "keep-optimizer-state": run.keep_optimizer_state,
            "rounds": run.num_server_rounds, "local-steps": run.local_steps, "nodes": NODES,
            "total-optimizer-steps": NODES * run.num_server_rounds * run.local_steps,
            "final-server-eval-loss": curve[-1], "server-eval-loss-curve": curve, "train-loss-curve": train_loss,
            "per-round": rounds, "seconds": time.perf_counter() - started}


def centralized(setup: Setup, label: str) -> dict:
    """The nodes' training episodes pooled and trained in one place: per round-equivalent, NODES x local-steps
    optimizer steps at that round's learning rate (held constant, AdamW restarted, seed seed + round, as a node
    trains a round), no proximal term; evaluated after each chunk by the same server Learner."""
    import torch

    from app.learning import model as models
    from app.common.config import RunConfig
    from app.learning.learner import Learner
    from app.learning.train import TrainSettings, train

    run = RunConfig.from_mapping(setup.run_config(**{"proximal-mu": 0.0}))
    started = time.perf_counter()
    trainer = Learner(run, "embedded:operator-0")  # its policy and processors; the data are everyone's
    models.load_trainable_state(trainer.policy, {k: torch.from_numpy(v.copy()) for k, v in setup.initial.items()})
    preprocessor, _ = trainer.processors(setup.stats)
    pooled = torch.utils.data.ConcatDataset([learner.data.train for learner in setup.node_learners])
    curve, train_loss, rounds = [setup.initial_loss], [], []
    for chunk in range(1, run.num_server_rounds + 1):
        chunk_started = time.perf_counter()
        settings = TrainSettings(steps=NODES * run.local_steps, batch_size=run.batch_size, lr=run.round_lr(chunk),
                                 lr_min_ratio=1.0, weight_decay=run.weight_decay, grad_clip_norm=run.grad_clip_norm,
                                 proximal_mu=0.0, seed=run.seed + chunk)
        result = train(trainer.policy, preprocessor, pooled, settings)
        curve.append(setup.evaluate(models.trainable_state(trainer.policy)))
        train_loss.append(result.loss)
        rounds.append({"round": chunk, "lr": settings.lr, "train-loss": result.loss, "server-eval-loss": curve[-1],
                       "seconds": time.perf_counter() - chunk_started})
        print(f"  {label} chunk {chunk}: server eval loss {curve[-1]:.4f} "
              f"({time.perf_counter() - chunk_started:.1f} s)", flush=True)
    return {"kind": "centralized", "training-episodes": sum(len(l.data.train_episodes) for l in setup.node_learners),
            "training-frames": len(pooled), "adamw": CHUNK_ADAMW, "proximal-mu": 0.0,
            "rounds": run.num_server_rounds, "steps-per-chunk": NODES * run.local_steps,
            "total-optimizer-steps": NODES * run.num_server_rounds * run.local_steps,
            "final-server-eval-loss": curve[-1], "server-eval-loss-curve": curve, "train-loss-curve": train_loss,
            "per-round": rounds, "seconds": time.perf_counter() - started}


def relative_percent(measured: float, reference: float) -> float:
    return 100.0 * (measured - reference) / reference


def flattening(curve: list[float]) -> float:
    """How much the last round still moved the loss, in % of the loss: small when the curve has flattened."""
    return abs(relative_percent(curve[-1], curve[-2])) if len(curve) > 1 else float("nan")


def figures_of(runs: dict) -> list[dict]:
    from bench.common import figure

    figures = []
    fp32 = runs["fedprox-fp32"]["final-server-eval-loss"]
    for encoding in ("bf16", "int8-delta", "int4-delta"):
        name = f"fedprox-{encoding}"
        if name in runs:
            diff = relative_percent(runs[name]["final-server-eval-loss"], fp32)
            figures.append(figure(f"final server eval loss, update-encoding {encoding} vs fp32 (|relative difference|)",
                                  1.0, abs(diff), "%", note=f"signed: {diff:+.3f} % (negative: lower loss than fp32)"))
    if "centralized" in runs:
        central = runs["centralized"]["final-server-eval-loss"]
        for name, what in (("fedprox-fp32", "FedProx (mu 0.01)"), ("fedavg-fp32", "FedAvg (mu 0)")):
            if name in runs:
                diff = relative_percent(runs[name]["final-server-eval-loss"], central)
                figures.append(figure(f"final server eval loss, federated {what} vs centralized, same total steps "
                                      "(relative difference)", 3.0, diff, "%",
                                      note="positive: federated is worse; target is for FedProx, FedAvg reported "
                                           "beside it" if "FedAvg" in what else "positive: federated is worse"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-lever", action="store_true", help="skip the more-rounds-fewer-steps run")
    parser.add_argument("--only", default="", help="comma-separated run names: a subset, or of the extra levers "
                        f"{', '.join(LEVERS)}; default: the standard set")
    parser.add_argument("--name", default="learning_quality", help="result file name under bench/results/")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine, 2 threads ran 10x slower)")
    args = parser.parse_args()
    configure_logging("WARNING")
    import torch

    torch.set_num_threads(args.threads)
    from rich.console import Console

    from bench.common import peak_rss_mib, save

    started = time.perf_counter()
    setup = prepare(args.rounds, args.local_steps, args.seed)
    print(f"setup {time.perf_counter() - started:.1f} s; initial server eval loss {setup.initial_loss:.4f} "
          f"(evaluation_only={setup.evaluation_only})", flush=True)
    plan = {
        "fedprox-fp32": lambda i: federated(setup, "fedprox-fp32", i),
        "fedprox-bf16": lambda i: federated(setup, "fedprox-bf16", i, **{"update-encoding": "bf16"}),
        "fedprox-int8-delta": lambda i: federated(setup, "fedprox-int8-delta", i, **{"update-encoding": "int8-delta"}),
        "fedprox-int4-delta": lambda i: federated(setup, "fedprox-int4-delta", i, **{"update-encoding": "int4-delta"}),
        "fedavg-fp32": lambda i: federated(setup, "fedavg-fp32", i, **{"proximal-mu": 0.0}),
        "centralized": lambda i: centralized(setup, "centralized"),
        # the same as fedprox-fp32 but seed + 1 (which also re-splits each node's held-out episodes): how far a
        # seed alone moves the final loss, to read the encodings' differences against
        "fedprox-fp32-next-seed": lambda i: federated(setup, "fedprox-fp32-next-seed", i, seed=args.seed + 1),
    }
    lever = "fedprox-fp32-2x-rounds-half-steps"
    if not args.no_lever and args.local_steps % 2 == 0:
        plan[lever] = lambda i: federated(setup, lever, i, **{"num-server-rounds": 2 * args.rounds,
                                                              "local-steps": args.local_steps // 2})
    wanted = [n for n in args.only.split(",") if n] or list(plan)
    for name, overrides in LEVERS.items():  # only when asked for by name (--only)
        if name.endswith(HALF_STEPS):
            overrides = {**overrides, "num-server-rounds": 2 * args.rounds, "local-steps": max(1, args.local_steps // 2)}
        plan[name] = functools.partial(federated, setup, name, **overrides)
    runs = {}
    for run_id, name in enumerate(wanted, start=1):
        runs[name] = plan[name](run_id)
        print(f"{name}: final {runs[name]['final-server-eval-loss']:.4f} in {runs[name]['seconds']:.0f} s", flush=True)
    total = time.perf_counter() - started
    for run in runs.values():
        run["last-round-change-percent"] = flattening(run["server-eval-loss-curve"])
    seed_spread = None
    if {"fedprox-fp32", "fedprox-fp32-next-seed"} <= runs.keys():
        seed_spread = relative_percent(runs["fedprox-fp32-next-seed"]["final-server-eval-loss"],
                                       runs["fedprox-fp32"]["final-server-eval-loss"])
    path = save(args.name, {
        "command": "python -m bench.learning_quality" + (f" --rounds {args.rounds}" if args.rounds != 24 else "")
                   + (f" --local-steps {args.local_steps}" if args.local_steps != 20 else "")
                   + (f" --only {args.only}" if args.only else "")
                   + (f" --name {args.name}" if args.name != "learning_quality" else ""),
        "figures": figures_of(runs) if "fedprox-fp32" in runs else [],
        "setting": {
            "nodes": NODES, "datasets": [node_config(i)["dataset-uri"] for i in range(NODES)],
            "rounds": args.rounds, "local-steps": args.local_steps, "batch-size": 8, "lr": 1e-3,
            "lr-min-ratio": 0.1, "seed": args.seed, "server-eval-dataset": "embedded:server-eval",
            "server-evaluation-only": setup.evaluation_only, "torch-threads": args.threads,
            "decoded-items-cached": CACHE,  # Cached: speed only, the losses are the same to the last digit
            "server-eval-frames": len(setup.server.data.heldout),
            "initial-server-eval-loss": setup.initial_loss,
            "transport": "in-process: FedVLA and app.federation.client_work.perform per node per round, no gRPC (transport does not "
                         "change what is learned; the real-process federation is tested elsewhere)",
            "centralized": "the four nodes' training splits pooled (ConcatDataset), app.learning.train.train with the same "
                           "total optimizer steps, batch, per-round learning rate (constant within a chunk of "
                           "nodes x local-steps steps), federated normalization stats and server Learner; AdamW "
                           + CHUNK_ADAMW + " (the same optimizer procedure the nodes run; only pooling vs "
                           "federating differs); no proximal term",
            "node-client-eval": "off (eval-frequency = rounds): nodes do not evaluate the received model; the "
                                "server evaluates every round",
        },
        "seed-spread-percent": seed_spread,  # fp32 with seed + 1 vs seed: the scale of run-to-run variation
        "runs": runs,
        "total-seconds": total,
        "peak_rss_mib": peak_rss_mib(),
    })
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
