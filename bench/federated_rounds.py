"""A real local federation (fedvla demo: SuperLink + SuperNode processes over gRPC): per-round wall time against
local compute time, traffic per node, and the server eval loss by round.

    python -m bench.federated_rounds [--nodes 2] [--rounds 3] [--local-steps 60]
                                         -> bench/results/federated_rounds.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from app.demo import run_demo
from rich.console import Console

from app.telemetry import configure_logging
from bench.common import peak_rss_mib, save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=60)
    args = parser.parse_args()
    configure_logging("WARNING")
    started = time.perf_counter()
    result = run_demo(args.nodes, {"num-server-rounds": args.rounds, "local-steps": args.local_steps},
                      Path(tempfile.mkdtemp()))
    rounds = [{k: r[k] for k in ("round", "wall-seconds", "max-compute-seconds", "train-loss", "client-eval-loss",
                                 "server-eval-loss")}
              | {"bytes-per-node-each-way": max(n["bytes-sent"] for n in r["nodes"].values())}
              for r in result.rounds]
    path = save("federated_rounds", {
        "nodes": args.nodes, "local_steps": args.local_steps, "status": result.status,
        "total_seconds": time.perf_counter() - started,
        "server_eval_loss": result.server_eval, "rounds": rounds,
        "peak_rss_mib_largest_child": peak_rss_mib(children=True),
    })
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
