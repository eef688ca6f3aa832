"""The demo as a user runs it (`fedvla demo`: SuperLink and SuperNode processes over gRPC on 127.0.0.1, warm
workers), once per wire layout (`wire-layout`: Flower's one array per wire array, then this project's packed
update), timed from the outside and from the processes' own logs:

- each round's wall time and overhead (the round's wall time minus the slowest node's compute);
- the ServerApp's requests to the SuperLink per message, from the SuperLink's access log: `push-object` per
  message sent, `pull-object` per reply (every object of Flower's object store is one request);
- seconds from the ServerApp sending a round's messages to the nodes' workers starting on them (of which the
  `flwr-clientapp` process's own start-up, from the ClientApp's log; the rest is mostly the SuperNode's 3 s poll),
  the training itself, and from the last worker's reply to the round's aggregate (the replies pulled, screened and
  folded in); the server's evaluation runs while the next round's nodes train.

    python -m bench.federated_rounds [--nodes 2] [--rounds 3] [--local-steps 60]
                                         -> bench/results/federated_rounds.json

Both layouts run in the same invocation, so their ratio holds whatever the machine. Figures (issues 8 and 19):
mean round overhead (rounds before the last) at most 10 s and at most a third of the per-array layout's, requests
per reply at most 5 (plus chunks), the losses of both layouts equal to the fourth decimal; the demo's total at
most 120 s. The embedded data are generated before the timed demos, as a user's second demo finds them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from app.learning import embedded
from bench.common import figure, save

LAYOUTS = ("per-array", "packed")
ACCESS = re.compile(r'^(\S+Z) INFO \[uvicorn\.access\] .* "POST /v1/runtime/([a-z-]+) HTTP')
SERVED = re.compile(r"^(\S+Z) \[info\s*\] message_served .* op=(\w+) .* seconds=([\d.]+)")
FORWARDED = re.compile(r"^(\S+Z) \[info\s*\] message_forwarded .* op=(\w+) seconds=([\d.]+) startup_seconds=([\d.]+)")


def when(timestamp: str) -> float:
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def server_events(run_dir: Path) -> list[dict]:
    events = []
    for line in (run_dir / "run.log").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "timestamp" in record:
            events.append({**record, "t": when(record["timestamp"])})
    return events


def superlink_requests(run_dir: Path) -> list[tuple[float, str]]:
    """(time, endpoint) of each request the ServerApp (and `flwr`) made to the SuperLink's HTTP APIs."""
    return [(when(m[1]), m[2]) for line in (run_dir / "processes" / "superlink.log").read_text().splitlines()
            if (m := ACCESS.match(line))]


def worker_messages(run_dir: Path) -> list[tuple[float, float, str]]:
    """(start, end, op) of each message the nodes' warm workers served."""
    served = []
    for path in sorted((run_dir / "processes").glob("operator_*.log")):
        for line in path.read_text().splitlines():
            if m := SERVED.match(line):
                end = when(m[1])
                served.append((end - float(m[3]), end, m[2]))
    return served


def clientapp_startups(run_dir: Path) -> list[tuple[float, str, float]]:
    """(when the handler started, op, seconds from the flwr-clientapp process's start to its handler) per message."""
    found = []
    for path in sorted((run_dir / "processes").glob("operator_*.log")):
        for line in path.read_text().splitlines():
            if m := FORWARDED.match(line):
                found.append((when(m[1]) - float(m[3]), m[2], float(m[4])))
    return found


def round_timings(run_dir: Path) -> list[dict]:
    """Per round, from the logs: requests per message, send -> worker start, training, last reply -> aggregate."""
    events = server_events(run_dir)
    requests, served, startups = superlink_requests(run_dir), worker_messages(run_dir), clientapp_startups(run_dir)
    starts = [e for e in events if e.get("event") == "round_start"]
    done = {e["round"]: e for e in events if e.get("event") == "round_done"}
    end_of_run = max(e["t"] for e in events)
    timings = []
    for i, start in enumerate(starts):
        begin = start["t"]
        end = starts[i + 1]["t"] if i + 1 < len(starts) else end_of_run + 1
        received = [e for e in events if e.get("event") == "replies_received" and begin <= e["t"] < end]
        sent, replies = sum(e["sent"] for e in received), sum(e["received"] for e in received)
        count = {kind: sum(1 for t, kind_ in requests if kind_ == kind and begin <= t < end)
                 for kind in ("push-messages", "push-object", "pull-object")}
        first_send = min((t for t, kind in requests if kind == "push-messages" and begin <= t < end), default=begin)
        trained = [(s, e) for s, e, op in served if op == "train" and begin <= s < end]
        started_apps = [seconds for t, op, seconds in startups if op == "train" and begin <= t < end]
        aggregated = received[0]["t"] if received else None  # the train replies: the round's first wait
        timings.append({
            "round": start["round"],
            "messages-sent": sent, "replies": replies,
            "push-object-per-message": round(count["push-object"] / sent, 1) if sent else None,
            "pull-object-per-reply": round(count["pull-object"] / replies, 1) if replies else None,
            "send-to-worker-start-seconds": round(max(s for s, _ in trained) - first_send, 2) if trained else None,
            "clientapp-startup-seconds": max(started_apps) if started_apps else None,
            "training-seconds": round(max(e - s for s, e in trained), 2) if trained else None,
            "last-reply-to-aggregate-seconds":
                round(aggregated - max(e for _, e in trained), 2) if trained and aggregated else None,
            "server-eval-seconds": done.get(start["round"], {}).get("server-eval-seconds"),
        })
    return timings


def run_demo(layout: str, args) -> dict:
    output_dir = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    demo = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--nodes", str(args.nodes), "--rounds",
                           str(args.rounds), "--local-steps", str(args.local_steps), "--output-dir", str(output_dir),
                           "--run-config", f'wire-layout="{layout}"'], capture_output=True, text=True)
    total = time.perf_counter() - started
    if demo.returncode != 0:
        sys.exit(f"the {layout} demo failed ({demo.returncode}):\n{demo.stderr[-3000:]}")
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "server" / "federated_metrics.json").read_text())
    timings = {t["round"]: t for t in round_timings(run_dir)}
    rounds = [{k: r.get(k) for k in ("round", "wall-seconds", "max-compute-seconds", "checkpoint-seconds",
                                     "train-loss", "client-eval-loss", "server-eval-loss")}
              | {"overhead-seconds": r["wall-seconds"] - r["max-compute-seconds"],
                 "bytes-per-node-each-way": max(n["bytes-sent"] for n in r["nodes"].values())}
              | timings.get(r["round"], {})
              for r in summary["rounds"]]
    server_eval = json.loads((run_dir / "server" / "eval_policy_loss_history.json").read_text())["server"]
    return {"total-seconds": round(total, 1), "rounds": rounds, "server_eval_loss": server_eval}


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
    runs = {layout: run_demo(layout, args) for layout in LAYOUTS}

    def overheads(layout: str) -> list[float]:  # the rounds before the last (the last also evaluates the final model)
        return [r["overhead-seconds"] for r in runs[layout]["rounds"]][:-1]

    def mean_overhead(layout: str) -> float:
        return statistics.mean(overheads(layout))

    def most(layout: str, key: str) -> float:
        return max(r[key] for r in runs[layout]["rounds"] if r.get(key) is not None)

    def typical(layout: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[layout]["rounds"] if r.get(key) is not None)

    packed, per_array = runs["packed"], runs["per-array"]
    losses_equal = all(abs(packed["server_eval_loss"][k] - per_array["server_eval_loss"][k]) < 5e-5
                       for k in per_array["server_eval_loss"])
    metric = "round overhead (round wall time - slowest node's compute), mean of the rounds before the last"
    figures = [
        figure(metric + ", packed", 10.0, mean_overhead("packed"), "s",
               note=f"each round: {[round(o, 2) for o in overheads('packed')]}"),
        figure(metric + ", packed / per-array in the same run", 1 / 3,
               mean_overhead("packed") / mean_overhead("per-array"), "x",
               note=f"per-array rounds: {[round(o, 2) for o in overheads('per-array')]}"),
        figure("the ServerApp's pull-object requests per reply, packed (tiny model: Message, RecordDict, its one "
               "ArrayRecord, the update's Array and its one chunk; the node's metrics and name ride in the update's "
               "safetensors header), median of the rounds", 5, typical("packed", "pull-object-per-reply"), "requests",
               note=f"most in a round: {most('packed', 'pull-object-per-reply')} (a reply pulled while its objects "
                    "were still arriving: Flower asks again for one not there yet); per-array: median "
                    f"{typical('per-array', 'pull-object-per-reply')}, "
                    f"most {most('per-array', 'pull-object-per-reply')}"),
        figure("server eval losses of both layouts equal to the fourth decimal", 1, float(losses_equal), "bool",
               higher_is_better=True),
        figure("demo total wall time, packed (fedvla demo, embedded data already generated)", 120.0,
               packed["total-seconds"], "s"),
    ]
    command = f"fedvla demo --nodes {args.nodes} --rounds {args.rounds} --local-steps {args.local_steps}"
    path = save("federated_rounds", {"command": command + ' --run-config \'wire-layout="<layout>"\'',
                                     "figures": figures, "layouts": runs, "status": "finished:completed"})
    Console().print_json(path.read_text())


if __name__ == "__main__":
    main()
