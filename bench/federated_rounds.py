"""The demo as a user runs it (`fedvla demo`: SuperLink and SuperNode processes over gRPC on 127.0.0.1, warm
workers), timed from the outside: its total wall time, and each round's overhead, the round's wall time minus the
slowest node's compute.

    python -m bench.federated_rounds [--nodes 2] [--rounds 3] [--local-steps 60]
                                         -> bench/results/federated_rounds.json

Figures (issue 8): round overhead at most 13 s (Flower's floor on this machine + 2 s; stretch 6 s) and the demo's
total at most 120 s. The embedded data are generated before the timed demo, as a user's second demo finds them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from app import embedded
from bench.common import figure, save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=60)
    args = parser.parse_args()
    embedded.ensure_base_model()
    embedded.ensure_server_eval_dataset()
    for i in range(args.nodes):
        embedded.ensure_operator_dataset(i)

    output_dir = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    demo = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--nodes", str(args.nodes), "--rounds",
                           str(args.rounds), "--local-steps", str(args.local_steps), "--output-dir", str(output_dir)],
                          capture_output=True, text=True)
    total = time.perf_counter() - started
    if demo.returncode != 0:
        sys.exit(f"the demo failed ({demo.returncode}):\n{demo.stderr[-3000:]}")
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "server" / "federated_metrics.json").read_text())
    rounds = [{k: r.get(k) for k in ("round", "wall-seconds", "max-compute-seconds", "server-eval-seconds",
                                     "checkpoint-seconds", "train-loss", "client-eval-loss", "server-eval-loss")}
              | {"overhead-seconds": r["wall-seconds"] - r["max-compute-seconds"],
                 "bytes-per-node-each-way": max(n["bytes-sent"] for n in r["nodes"].values())}
              for r in summary["rounds"]]
    *middle, last = [r["overhead-seconds"] for r in rounds]
    worst = max(middle) if middle else None
    metric = "round overhead (round wall time - slowest node's compute), worst round before the last"
    figures = [
        figure(metric, 13.0, worst, "s"),
        figure(metric + " (stretch)", 6.0, worst, "s"),
        figure("round overhead of the last round, which also sends the final model's evaluate messages", 13.0, last,
               "s", note="two round trips by design: only the final model needs a message of its own"),
        figure("demo total wall time (fedvla demo, embedded data already generated)", 120.0, total, "s"),
    ]
    path = save("federated_rounds", {
        "command": f"fedvla demo --nodes {args.nodes} --rounds {args.rounds} --local-steps {args.local_steps}",
        "figures": figures, "rounds": rounds, "status": "finished:completed",
        "server_eval_loss": json.loads((run_dir / "server" / "eval_policy_loss_history.json").read_text())["server"],
    })
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
