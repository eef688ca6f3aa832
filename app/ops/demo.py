"""`fedvla demo`: a real federation on this machine, on the embedded default.

Generates the embedded model and operator datasets, starts a SuperLink and N SuperNodes as separate processes
talking gRPC over TLS on 127.0.0.1 (a CA and certificate made for this deployment; plain gRPC only with
`tls=False`), submits this app with `flwr run`, follows the run, stops everything it started, and returns where
the outputs went. A SuperNode that dies is started again, as a container's restart policy would, and the run
carries on without it meanwhile.

The console gets a line per phase; each process's full output goes to its log file under the deployment's `logs`
directory (this process's own records to demo.log, as JSON lines), copied into the run's `processes` directory.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from app.common.config import EMBEDDED_OVERRIDES, RunConfig
from app.common.telemetry import add_log_file, get_logger

log = get_logger(__name__)
APP_DIR = Path(__file__).resolve().parents[2]  # the Flower App: the directory holding pyproject.toml


@dataclass(frozen=True)
class DemoResult:
    status: str
    run_dir: Path
    rounds: list[dict]
    server_eval: dict[str, float]
    final_checkpoint: Path | None
    logs: Path  # every process's log, this one's included


class ServerProgress:
    """Follows the ServerApp's own log (server/server.log of the run) and hands each new event to `show`, so the
    demo's console shows rounds as they finish although the ServerApp runs in another process."""

    EVENTS = ("run_start", "round_start", "round_done", "checkpoint_saved", "reply_dropped", "run_done", "run_failed")

    def __init__(self, output_dir: Path, run_id: int, show):
        self.output_dir, self.run_id, self.show = output_dir, run_id, show
        self.position = 0
        self.ended = False  # the ServerApp logged the end of its run

    def poll(self) -> None:
        try:
            log_file = find_run_dir(self.output_dir, self.run_id) / "server" / "server.log"
        except FileNotFoundError:
            return  # the ServerApp has not started writing yet
        if not log_file.exists():
            return
        with open(log_file, encoding="utf-8") as f:
            f.seek(self.position)
            for line in f:
                if not line.endswith("\n"):
                    break  # half-written: read it next time
                self.position += len(line.encode())
                record = json.loads(line)
                self.ended = self.ended or record.get("event") in ("run_done", "run_failed")
                if record.get("event") in self.EVENTS:
                    self.show(record)


def find_run_dir(output_dir: Path, run_id: int) -> Path:
    for candidate in sorted(output_dir.glob("*/run_config.json"), reverse=True):
        if json.loads(candidate.read_text()).get("run-id") == run_id:
            return candidate.parent
    raise FileNotFoundError(f"no outputs for run {run_id} under {output_dir}")


def run_demo(num_nodes: int, run_overrides: dict, output_dir: Path, on_event=None, tls: bool = True) -> DemoResult:
    from app.learning import embedded
    from app.learning.checkpoint import latest_checkpoint
    from app.ops.launch import Deployment

    run_config = {**EMBEDDED_OVERRIDES, "min-train-nodes": num_nodes, "min-available-nodes": num_nodes,
                  **run_overrides, "output-dir": str(output_dir.resolve())}
    run = RunConfig.from_mapping(run_config)  # fail here, before any process starts
    workdir = Path(tempfile.mkdtemp(prefix="fedvla-demo-"))
    add_log_file(workdir / "logs" / "demo.log")
    log.info("preparing_embedded_data", path=str(embedded.embedded().root))  # written on the first run only
    embedded.ensure_base_model()
    embedded.ensure_server_eval_dataset()
    datasets = [str(embedded.ensure_operator_dataset(i)) for i in range(num_nodes)]  # each node checks its own

    with Deployment(workdir, tls=tls, restart_nodes=True) as deployment:
        deployment.start_superlink(cwd=APP_DIR)
        threads = max(1, (os.cpu_count() or 1) // num_nodes)  # the nodes share this machine's cores
        for i, uri in enumerate(datasets):
            deployment.start_supernode(f"operator_{i}", uri, run_config["model"], threads=threads,
                                       cameras=run.cameras, camera_map=run.camera_map)
        log.info("supernodes_started", nodes=sorted(deployment.nodes), threads_each=threads)
        started = time.time()
        run_id = deployment.submit(APP_DIR, run_config)
        log.info("run_submitted", run_id=run_id)
        progress = ServerProgress(output_dir, run_id, on_event or (lambda record: None))
        status = deployment.wait(run_id, on_poll=progress.poll, ended=lambda: progress.ended)
        progress.poll()
        log.info("run_finished", run_id=run_id, status=status, seconds=round(time.time() - started, 1))
        run_dir = find_run_dir(output_dir, run_id)
    # Keep the processes' own logs next to the run they produced.
    (run_dir / "processes").mkdir(exist_ok=True)
    for path in (workdir / "logs").glob("*.log"):
        (run_dir / "processes" / path.name).write_bytes(path.read_bytes())
    metrics_path = run_dir / "server" / "federated_metrics.json"
    rounds = json.loads(metrics_path.read_text())["rounds"] if metrics_path.exists() else []
    history_path = run_dir / "server" / "eval_policy_loss_history.json"
    server_eval = json.loads(history_path.read_text())["server"] if history_path.exists() else {}
    return DemoResult(status, run_dir, rounds, server_eval, latest_checkpoint(run_dir / "models"),
                      logs=run_dir / "processes")
