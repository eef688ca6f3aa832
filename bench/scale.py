"""Scale: many SuperNodes on one small machine, with Flower's simulation engine.

    python -m bench.scale [--sizes 2,4,8,16,32] [--rounds 3] [--large 1000] [--large-fraction 0.1]
                          [--large-rounds 2] [--stats-fraction 0.1] [--actors 2]
                                         -> bench/results/scale.json

Every run is `flwr run . local-simulation` (Flower's simulation engine: one local SuperLink, N virtual SuperNodes
served by a pool of `--actors` Ray actors, each a warm Python process that runs the ClientApp for whichever node
a message is for) with the embedded tiny SmolVLA and a tiny amount of work per node, so what is timed is the
federation's own cost: messages, a node's Learner being built for a message (an actor keeps two, so with more
nodes than that every message builds one), aggregation, the server's evaluation.

1. Round time vs N: N = `--sizes` virtual SuperNodes, every node trains every round (fraction-train 1.0),
   `--rounds` rounds; only the last round is evaluated (eval-frequency = rounds), so the rounds before it are train
   rounds alone, and the last one adds the nodes' and the server's evaluation of the final model.
2. `--large` virtual SuperNodes with fraction-train `--large-fraction` (100 of 1,000 train each round, and as
   many evaluate the final model) and stats-fraction `--stats-fraction` (the normalization stats are asked of a
   seeded sample, not of every node).

Each node holds the same data whatever N is: a synthetic SO-100 dataset of N x 2 episodes of 3 frames (images,
no video: quick to write) is dealt out among the N nodes (partition-dataset), one episode to train on and one
held out. The datasets are written once into $FEDVLA_HOME/bench/scale/. Machine load (`os.getloadavg()`) is
recorded before each run: other work on the machine slows the rounds. The datasets of 2-32 nodes take seconds to
write, the 1,000 nodes' one (2,000 episodes) one to three minutes, once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from app.learning import embedded
from app.common.config import fedvla_home
from app.ops.launch import config_arg, free_port
from bench.common import figure, save

REPO = Path(__file__).resolve().parents[1]
EPISODES_PER_NODE = 2  # one to train on, one held out (app.learning.data.partition_episodes needs two)
FRAMES_PER_EPISODE = 3
TIME_BUDGET_S = 900.0  # the whole benchmark, datasets already written


def scale_dataset(nodes: int, seed: int = 0) -> tuple[Path, float]:
    """The dataset the `nodes` virtual nodes share (EPISODES_PER_NODE each, all four task families); written once.
    Returns its path and the seconds spent writing it now (0 when it was there)."""
    from app.learning.embedded.datasets import write_dataset

    episodes = nodes * EPISODES_PER_NODE
    path = fedvla_home() / "bench" / "scale" / f"so100_{episodes}x{FRAMES_PER_EPISODE}_seed{seed}"
    started = time.perf_counter()
    existed = path.exists()
    embedded._materialize(path, lambda out: write_dataset(
        out, repo_id=f"fedvla/scale_{episodes}", task_families=[0, 1, 2, 3], num_episodes=episodes,
        frames_per_episode=FRAMES_PER_EPISODE, seed=seed, use_videos=False))
    return path, 0.0 if existed else time.perf_counter() - started


class LocalSimulation:
    """A private FLWR_HOME whose `local-simulation` connection starts a local SuperLink (`flwr run` starts it on
    first use, in the background) with Flower's Ray simulation backend; `stop()` ends it and what it started."""

    def __init__(self, workdir: Path, actors: int):
        self.home = workdir / "flwr-home"
        self.home.mkdir(parents=True)
        self.actors = actors
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="fsr-", dir="/tmp"))  # short: Ray's socket paths are limited
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env = {
            **env,
            # Every run starts fresh Python processes (ServerApp, Ray actors) that import torch and LeRobot: with
            # bytecode cached, as in an installed environment, that takes a third of the time. Kept beside the
            # datasets, so neither the repository nor the environment is written to.
            "PYTHONPYCACHEPREFIX": str(fedvla_home() / "bench" / "pycache"),
            "RAY_DEDUP_LOGS": "0",  # every node's log line reaches the streamed log (learners are counted there)
            # Ray runs its workers at nice 15: on a machine shared with other work they would get the CPU last
            "RAY_worker_niceness": "0",
            "FLWR_HOME": str(self.home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # offline: the app's dependencies are installed
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
            "RAY_TMPDIR": str(self.ray_tmp),  # this benchmark's Ray processes are found by this path
            "HF_DATASETS_CACHE": str(workdir / "hf-datasets"),  # the nodes' dataset caches go with the run
            "WANDB_MODE": "offline",
        }

    def configure(self, nodes: int) -> None:
        """`nodes` virtual SuperNodes for the next `flwr run`; one CPU per ClientApp actor and `actors` CPUs for
        Ray: a pool of `actors` actors."""
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local-simulation"\n\n[superlink.local-simulation]\naddress = ":local:"\n'
            f"options.num-supernodes = {nodes}\n"
            "options.backend.client-resources.num-cpus = 1\n"
            "options.backend.client-resources.num-gpus = 0.0\n"
            f"options.backend.init-args.num-cpus = {self.actors}\n"
        )

    def run(self, run_config: dict, log_path: Path, timeout: float) -> subprocess.CompletedProcess:
        with log_path.open("w") as log:
            return subprocess.run(
                [str(Path(sys.executable).parent / "flwr"), "run", str(REPO), "local-simulation", "--stream",
                 "--run-config", config_arg(run_config)],
                stdout=log, stderr=subprocess.STDOUT, text=True, env=self.env, timeout=timeout, cwd=REPO)

    def stop(self) -> None:
        """End the local SuperLink this home started, its children (SuperExec, simulation, Ray), and any Ray
        process of this benchmark's Ray directory that outlived them."""
        import psutil

        ours = []
        for process in psutil.process_iter(["cmdline"]):
            command = " ".join(process.info["cmdline"] or [])
            if str(self.home) in command or str(self.ray_tmp) in command:
                ours.append(process)
        for process in list(ours):
            try:
                ours.extend(process.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        for process in {p.pid: p for p in ours}.values():
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(ours, timeout=10)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def read_run(output_dir: Path, log_path: Path) -> dict:
    """What a finished run left: per-round wall seconds and node counts, the set-up before round 1, the stats
    query, and from the streamed log how many Learners the actors built and how many actors there were."""
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "server" / "federated_metrics.json").read_text())
    events = [json.loads(line) for line in (run_dir / "server" / "server.log").read_text().splitlines()]

    def at(event: dict) -> float:
        from datetime import datetime

        return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()

    first = {}
    for event in events:
        first.setdefault(event["event"], event)
    stats_query = next(e for e in events if e["event"] == "replies_received")
    # each round's message exchanges, in order: its train messages, then (last round) the final evaluate messages
    exchanges: dict[int, list[dict]] = {}
    current = None
    for event in events:
        if event["event"] == "round_start":
            current = exchanges.setdefault(event["round"], [])
        elif event["event"] == "replies_received" and current is not None:
            current.append({"sent": event["sent"], "received": event["received"], "seconds": event["seconds"]})
    log = log_path.read_text(errors="replace")
    rounds = [{
        "round": r["round"],
        "wall-seconds": round(r["wall-seconds"], 2),
        "nodes-trained": sum(1 for n in r["nodes"].values() if n.get("samples")),
        "nodes-evaluated": sum(1 for n in r["nodes"].values() if n.get("eval-loss") is not None),
        "max-compute-seconds": round(r["max-compute-seconds"], 3),
        "server-eval-seconds": round(r.get("server-eval-seconds", 0.0), 2),
        "dropped": len(r["dropped"]),
        "train-loss": r["train-loss"],
        "train-messages": exchanges.get(r["round"], [{}])[0],
        **({"final-evaluate-messages": exchanges[r["round"]][1]} if len(exchanges.get(r["round"], [])) > 1 else {}),
    } for r in summary["rounds"]]
    return {
        "status": "finished:completed" if "run_done" in first else "incomplete",
        "rounds": rounds,
        "setup-seconds": round(at(first["round_start"]) - at(first["run_start"]), 1),
        "stats-query": {"nodes-asked": stats_query["sent"], "replies": stats_query["received"],
                        "seconds": stats_query["seconds"]},
        "learners-built": log.count("learner_ready"),
        "ray-actors": len(set(re.findall(r"ClientAppActor pid=(\d+)", log))),
        "client-dirs": sum(1 for _ in (run_dir / "clients").iterdir()),
    }


def one_run(sim: LocalSimulation, workdir: Path, name: str, nodes: int, run_config: dict, timeout: float) -> dict:
    output_dir = workdir / name
    log_path = workdir / f"{name}.log"
    sim.configure(nodes)
    load = os.getloadavg()
    started = time.perf_counter()
    print(f"[scale] {name}: {nodes} virtual SuperNodes, load average {load[0]:.1f} ...", file=sys.stderr, flush=True)
    try:
        done = sim.run({**run_config, "output-dir": str(output_dir)}, log_path, timeout)
        code = done.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    wall = time.perf_counter() - started
    result = {"nodes": nodes, "loadavg-before": [round(x, 2) for x in load], "flwr-run-seconds": round(wall, 1),
              "run-config": {k: v for k, v in run_config.items() if k not in ("model", "server-eval-dataset")}}
    try:
        result.update(read_run(output_dir, log_path))
    except (FileNotFoundError, ValueError, StopIteration, KeyError) as exc:
        result.update(status=f"failed ({code}): {type(exc).__name__}: {exc}",
                      log_tail=log_path.read_text(errors="replace")[-3000:])
    if code != 0 and result.get("status") == "finished:completed":
        result["status"] = f"flwr run exited {code}"
    print(f"[scale] {name}: {result['status']} in {wall:.0f} s, rounds "
          f"{[r['wall-seconds'] for r in result.get('rounds', [])]}", file=sys.stderr, flush=True)
    return result


def completed(result: dict, rounds: int, trained_per_round: int) -> bool:
    done = result.get("rounds", [])
    return (result["status"] == "finished:completed" and len(done) == rounds
            and all(r["nodes-trained"] == trained_per_round and r["dropped"] == 0 for r in done))


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def sweep_row(result: dict) -> dict:
    """One line of round time vs N: the train rounds (all but the last), and the last round (train, the server's
    evaluation, and the final model's evaluate messages to every node)."""
    rounds = result.get("rounds", [])
    train = [r["wall-seconds"] for r in rounds[:-1]]
    last = rounds[-1] if rounds else {}
    return {
        "nodes": result["nodes"],
        "completed": result.get("completed", False),
        "train-round-seconds": mean(train),
        "train-round-seconds-per-node": round(mean(train) / result["nodes"], 3) if train else None,
        "last-round-seconds": last.get("wall-seconds"),
        "last-round-server-eval-seconds": last.get("server-eval-seconds"),
        "last-round-final-evaluate-seconds": last.get("final-evaluate-messages", {}).get("seconds"),
        "stats-query-seconds": result.get("stats-query", {}).get("seconds"),
        "setup-seconds": result.get("setup-seconds"),
        "flwr-run-seconds": result["flwr-run-seconds"],
        "learners-built": result.get("learners-built"),
        "loadavg-1min-before": result["loadavg-before"][0],
    }


def summarize_large(result: dict) -> dict:
    rounds = result.get("rounds", [])
    return {
        "nodes": result["nodes"],
        "completed": result.get("completed", False),
        "stats-query": result.get("stats-query"),
        "round-seconds": [r["wall-seconds"] for r in rounds],
        "train-messages-per-round": [r["train-messages"].get("sent") for r in rounds],
        "train-seconds-per-round": [r["train-messages"].get("seconds") for r in rounds],
        "final-evaluate": rounds[-1].get("final-evaluate-messages") if rounds else None,
        "server-eval-seconds": rounds[-1].get("server-eval-seconds") if rounds else None,
        "setup-seconds": result.get("setup-seconds"),
        "flwr-run-seconds": result["flwr-run-seconds"],
        "learners-built": result.get("learners-built"),
        "loadavg-1min-before": result["loadavg-before"][0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,4,8,16,32", help="virtual SuperNodes of the round-time sweep")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--large", type=int, default=1000, help="virtual SuperNodes of the large run (0: skip it)")
    parser.add_argument("--large-fraction", type=float, default=0.1, help="fraction-train of the large run")
    parser.add_argument("--large-rounds", type=int, default=2)
    parser.add_argument("--stats-fraction", type=float, default=0.1, help="stats-fraction of the large run")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors serving the virtual SuperNodes")
    parser.add_argument("--keep", action="store_true", help="keep the runs' outputs and logs (printed)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",") if n]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped benchmark still stops what it started

    bench_started = time.perf_counter()
    embedded.ensure_base_model()
    embedded.ensure_server_eval_dataset()
    datasets, written = {}, {}
    for n in sorted(set(sizes + ([args.large] if args.large else []))):
        datasets[n], seconds = scale_dataset(n)
        if seconds:
            written[str(datasets[n].name)] = round(seconds, 1)
    setup_seconds = time.perf_counter() - bench_started

    base = {"model": "embedded:tiny", "server-eval-dataset": "embedded:server-eval", "lr": 0.001,
            "local-steps": 2, "batch-size": 2, "checkpoint-interval": 100000, "resume-from": ""}
    workdir = Path(tempfile.mkdtemp(prefix="fedvla-scale-"))
    sim = LocalSimulation(workdir, args.actors)
    sweep, large = [], None
    runs_started = time.perf_counter()
    try:
        for n in sizes:
            result = one_run(sim, workdir, f"n{n}", n, {
                **base, "partition-dataset": str(datasets[n]), "num-server-rounds": args.rounds,
                "eval-frequency": args.rounds, "fraction-train": 1.0, "min-train-nodes": n,
                "min-available-nodes": n}, timeout=900)
            result["completed"] = completed(result, args.rounds, n)
            sweep.append(result)
        if args.large:
            per_round = max(int(args.large * args.large_fraction), 2)
            large = one_run(sim, workdir, f"n{args.large}", args.large, {
                **base, "partition-dataset": str(datasets[args.large]), "num-server-rounds": args.large_rounds,
                "eval-frequency": args.large_rounds, "fraction-train": args.large_fraction,
                "min-train-nodes": per_round, "min-available-nodes": args.large,
                "stats-fraction": args.stats_fraction}, timeout=2400)
            large["completed"] = completed(large, args.large_rounds, per_round)
    finally:
        sim.stop()
        if args.keep:
            print(f"[scale] outputs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    runs_seconds = time.perf_counter() - runs_started

    table = [sweep_row(result) for result in sweep]
    large_summary = summarize_large(large) if large is not None else None

    biggest = max(sweep, key=lambda r: r["nodes"]) if sweep else None
    figures = []
    if biggest is not None:
        figures.append(figure(
            f"{biggest['nodes']} virtual SuperNodes complete {args.rounds} rounds, every node training every round "
            f"(simulation engine, {biggest.get('ray-actors', '?')} Ray actors)", 1,
            1 if biggest["completed"] else 0, "completed", higher_is_better=True))
    if large is not None:
        per_round = max(int(args.large * args.large_fraction), 2)
        figures.append(figure(
            f"{args.large} virtual SuperNodes with fraction-train {args.large_fraction} complete {args.large_rounds} "
            f"rounds ({per_round} nodes train each round; stats-fraction {args.stats_fraction})", 1,
            1 if large["completed"] else 0, "completed", higher_is_better=True))
    total = time.perf_counter() - bench_started
    figures.append(figure("benchmark wall time (datasets already written)", TIME_BUDGET_S, runs_seconds, "s"))

    path = save("scale", {
        "command": " ".join(["python -m bench.scale", *(a for a in sys.argv[1:] if a != "--keep")]),
        "engine": f"Flower simulation engine (flwr run . local-simulation, Ray backend, {args.actors} ClientApp "
                  "actors of 1 CPU each); one local SuperLink for all runs",
        "notes": ["every run starts fresh processes (the ServerApp, Ray and its actors); Python bytecode is cached "
                  "(PYTHONPYCACHEPREFIX under $FEDVLA_HOME/bench) as in an installed environment",
                  "an actor keeps 2 Learners: with more than 2 nodes per actor every message builds the node's "
                  "Learner (policy, dataset, processors), a cost a deployment's warm workers pay once per run",
                  "loadavg-1min-before: other work on this machine when the run started"],
        "figures": figures,
        "round_time_vs_n": table,
        "large_run": large_summary,
        "sweep": sweep,
        "large": large,
        "datasets_written_seconds": written,
        "setup_seconds": round(setup_seconds, 1),
        "runs_seconds": round(runs_seconds, 1),
        "total_seconds": round(total, 1),
    })
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
