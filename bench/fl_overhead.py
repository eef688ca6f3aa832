"""FL overhead ratio: the rounds of a federated run with about 60 s of local compute per round, against standalone
training of the same steps on the same data with the same threads, both measured here in one command.

    python -m bench.fl_overhead [--nodes 2] [--rounds 3] [--local-steps 720]
                                         -> bench/results/fl_overhead.json

Federated: `fedvla demo` (real SuperLink and SuperNodes), the sum of its rounds' wall times (train messages,
aggregation, the nodes' and the server's evaluations, checkpoints, and the last round's evaluate messages).
Standalone: one process per operator dataset, all at once as the nodes run, each training `rounds` x
`local-steps` steps in `rounds` calls with the federation's learning-rate schedule, nothing else. Target (issue 8):
ratio at most 1.2, stretch 1.1. Start-up is not in either figure: bench.federated_rounds measures it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from app.common.config import EMBEDDED_OVERRIDES, RunConfig
from app.common.telemetry import configure_logging
from bench.common import figure, save


def standalone_node(index: int, rounds: int, local_steps: int) -> dict:
    """Train embedded operator `index` as its node would over `rounds` rounds, with no federation around it."""
    from app.learning import model
    from app.learning.learner import Learner

    run = RunConfig.from_mapping({**EMBEDDED_OVERRIDES, "local-steps": local_steps, "num-server-rounds": rounds})
    learner = Learner(run, f"embedded:operator-{index}")
    arrays = {k: v.detach().clone() for k, v in model.trainable_state(learner.policy).items()}
    stats = learner.local_stats()
    learner.processors(stats)  # built once per run by a warm node too
    started = time.perf_counter()
    for server_round in range(1, rounds + 1):
        arrays = learner.train_round(arrays, stats, run.round_lr(server_round), server_round).arrays
    return {"seconds": time.perf_counter() - started, "steps": rounds * local_steps}


def standalone(nodes: int, rounds: int, local_steps: int) -> list[dict]:
    threads = str(max(1, (os.cpu_count() or 1) // nodes))  # as fedvla demo gives each node
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    children = [subprocess.Popen([sys.executable, "-m", "bench.fl_overhead", "--standalone-node", str(i),
                                  "--rounds", str(rounds), "--local-steps", str(local_steps)],
                                 stdout=subprocess.PIPE, text=True, env=env) for i in range(nodes)]
    results = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            sys.exit(f"standalone training failed ({child.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=720)
    parser.add_argument("--standalone-node", type=int, help=argparse.SUPPRESS)  # the child processes
    args = parser.parse_args()
    configure_logging("WARNING")
    if args.standalone_node is not None:
        print(json.dumps(standalone_node(args.standalone_node, args.rounds, args.local_steps)))
        return

    from app.ops.demo import run_demo

    alone = standalone(args.nodes, args.rounds, args.local_steps)
    standalone_seconds = max(r["seconds"] for r in alone)
    result = run_demo(args.nodes, {"num-server-rounds": args.rounds, "local-steps": args.local_steps},
                      Path(tempfile.mkdtemp()))
    if result.status != "finished:completed":
        sys.exit(f"the federated run ended {result.status}")
    federated_seconds = sum(r["wall-seconds"] for r in result.rounds)
    ratio = federated_seconds / standalone_seconds
    metric = "FL overhead ratio: federated rounds' wall time / standalone training of the same steps"
    path = save("fl_overhead", {
        "nodes": args.nodes, "rounds": args.rounds, "local_steps": args.local_steps,
        "figures": [figure(metric, 1.2, ratio, "ratio"), figure(metric + " (stretch)", 1.1, ratio, "ratio")],
        "federated_rounds_seconds": federated_seconds,
        "federated_compute_seconds": [r["max-compute-seconds"] for r in result.rounds],
        "round_wall_seconds": [r["wall-seconds"] for r in result.rounds],
        "standalone_seconds_per_node": [r["seconds"] for r in alone],
    })
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
