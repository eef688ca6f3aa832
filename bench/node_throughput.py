"""A warm node's training speed on a GPU against LeRobot's own training step, and what each round pays besides
training.

    python -m bench.node_throughput [--model lerobot/smolvla_base] [--dataset hf:lerobot/svla_so100_pickplace]
                                    [--batch-size 8] [--steps 100] [--rounds 3] [--device cuda]
                                         -> bench/results/node_throughput.json

Node: the worker's Learner (policy on the device, dataset opened, processors built) trains `rounds` rounds of
`steps` steps as train messages would; LeRobot: `lerobot.scripts.lerobot_train.update_policy` (Accelerate, the
same policy, data loader, pre-processor and batch) for as many steps. Targets (issue 8): node samples/s at least
95 % of LeRobot's; start-up (message time outside training) paid once per run, so later rounds' at most 1 s.
Without a CUDA device it records that nothing was measured, and why.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from app.common.config import EMBEDDED_OVERRIDES, NodeConfig, RunConfig
from app.common.telemetry import configure_logging
from bench.common import figure, save

THROUGHPUT = "node training samples/s relative to LeRobot's update_policy loop, same device and batch"
STARTUP = "start-up of a later round: message time outside training (paid once per run when warm)"


def lerobot_samples_per_second(learner, preprocessor, steps: int, batch_size: int) -> float:
    import torch
    from accelerate import Accelerator
    from lerobot.scripts.lerobot_train import update_policy
    from lerobot.utils.logging_utils import AverageMeter, MetricsTracker

    from app.learning.train import _batches, make_loader

    accelerator = Accelerator(cpu=learner.policy.config.device == "cpu")
    trainable = [p for p in learner.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learner.run.lr, weight_decay=learner.run.weight_decay)
    policy, optimizer = accelerator.prepare(learner.policy, optimizer)
    meters = {name: AverageMeter(name, ":.3f") for name in ("loss", "grad_norm", "lr", "update_s", "gpu_mem_gb")}
    tracker = MetricsTracker(batch_size, len(learner.data.train), 1, meters, accelerator=accelerator)
    batches = _batches(make_loader(learner.data.train, batch_size, seed=0, shuffle=True))
    for _ in range(3):  # warm-up, as the node's first round warms its kernels
        update_policy(tracker, policy, preprocessor(next(batches)), optimizer, learner.run.grad_clip_norm, accelerator)
    _sync()
    started = time.perf_counter()
    for _ in range(steps):
        update_policy(tracker, policy, preprocessor(next(batches)), optimizer, learner.run.grad_clip_norm, accelerator)
    _sync()
    return steps * batch_size / (time.perf_counter() - started)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(args) -> dict:
    from app.learning import model
    from app.node.worker import Learners

    run = RunConfig.from_mapping({**EMBEDDED_OVERRIDES, "model": args.model, "device": args.device,
                                  "local-steps": args.steps, "batch-size": args.batch_size})
    started = time.perf_counter()
    learner = Learners(capacity=1).get(1, run, NodeConfig(dataset_uri=args.dataset, name="bench"))
    build_seconds = time.perf_counter() - started
    arrays = {k: v.detach().to("cpu", copy=True) for k, v in model.trainable_state(learner.policy).items()}
    stats = learner.local_stats()
    rounds = []
    for server_round in range(1, args.rounds + 1):
        started = time.perf_counter()
        result = learner.train_round(arrays, stats, run.lr, server_round)
        wall = time.perf_counter() - started
        rounds.append({"round": server_round, "wall_seconds": wall, "compute_seconds": result.metrics["compute-seconds"],
                       "samples_per_second": result.metrics["num-examples"] / result.metrics["compute-seconds"]})
    node = max(r["samples_per_second"] for r in rounds[1:] or rounds)
    preprocessor, _ = learner.processors(stats)
    reference = lerobot_samples_per_second(learner, preprocessor, args.steps, args.batch_size)
    later_startup = max(r["wall_seconds"] - r["compute_seconds"] for r in rounds[1:] or rounds)
    return {
        "figures": [figure(THROUGHPUT, 0.95, node / reference, "ratio", higher_is_better=True),
                    figure(STARTUP, 1.0, later_startup, "s")],
        "node_samples_per_second": node, "lerobot_samples_per_second": reference,
        "first_round_startup_seconds": build_seconds + rounds[0]["wall_seconds"] - rounds[0]["compute_seconds"],
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lerobot/smolvla_base")
    parser.add_argument("--dataset", default="hf:lerobot/svla_so100_pickplace")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    configure_logging("WARNING")
    import torch

    settings = {"model": args.model, "dataset": args.dataset, "batch_size": args.batch_size, "steps": args.steps,
                "device": args.device}
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        why = "no CUDA device on this machine: run it where a GPU is"
        result = {"figures": [figure(THROUGHPUT, 0.95, None, "ratio", why, higher_is_better=True),
                              figure(STARTUP, 1.0, None, "s", why)]}
    else:
        result = measure(args)
    path = save("node_throughput", {**settings, **result})
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
