"""Run outputs: the `outputs/<timestamp>/` layout, JSON metrics and charts.

Every JSON file is written atomically, so a reader (or a crash) never sees half of one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.common.files import write_json_atomic
from app.common.telemetry import get_logger

__all__ = ["new_run_dir", "write_json_atomic", "line_chart"]

log = get_logger(__name__)


def new_run_dir(base: Path) -> Path:
    """A fresh `base/<YYYY-MM-DD_HH-MM-SS>` directory (suffixed if two runs start in the same second)."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = base / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {base}")


def line_chart(
    path: Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """One PNG line chart of named (x, y) series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, (xs, ys) in series.items():
        if xs:
            ax.plot(list(xs), list(ys), marker="o", markersize=3, label=name, linewidth=2 if name == "server" else 1.2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if series:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


class NodeNames:
    """Node id -> the name its replies give. A node's data is kept by its Flower node id, the name is for people: two
    nodes that report the same name (two operators who both kept a default) are shown as "operator_0 (node 123)"
    instead of overwriting each other's metrics."""

    def __init__(self):
        self.names: dict[int, str] = {}
        self._warned: set[str] = set()

    def add(self, node_id: int, name: str) -> None:
        self.names[node_id] = name
        if self.shared(node_id) and name not in self._warned:
            self._warned.add(name)
            log.warning("node_name_shared", name=name, node_ids=self.sharing(name),
                        fix="give each node its own name (fedvla node --name); reports tell them apart by node id")

    def sharing(self, name: str) -> list[int]:
        return sorted(node_id for node_id, other in self.names.items() if other == name)

    def shared(self, node_id: int) -> bool:
        return len(self.sharing(self.names.get(node_id, ""))) > 1

    def label(self, node_id: int) -> str:
        name = self.names.get(node_id, str(node_id))
        return f"{name} (node {node_id})" if self.shared(node_id) else name

    def labelled(self, by_node: Mapping[int, Any]) -> dict[str, Any]:
        return {self.label(node_id): value for node_id, value in by_node.items()}


class RunOutputs:
    """The federated run's `outputs/<timestamp>/` directory (the upstream zk0 layout):

    run.log                          every server-side log record (JSON lines; Flower's own included)
    run_config.json                  the run-config the run was started with
    server/server.log                this app's server-side records only
    server/round_N_server_eval.json  server-side evaluation of the global model after round N (0: before training)
    server/eval_policy_loss_history.json, eval_policy_loss_chart.png   server and per-client eval loss by round
    server/federated_metrics.json, federated_metrics.png               per-round wall time, compute, bytes, losses
    clients/client_<name>/client.log, round_N.json                     each node's replies, as the server got them
                                     (client_<name>_node<id>/ for nodes that share a name)
    models/checkpoint_round_N/       LeRobot checkpoints (see app.learning.checkpoint)
    """

    def __init__(self, root: Path):
        self.root = root
        self.server = root / "server"
        self.clients = root / "clients"
        self.models = root / "models"
        for directory in (self.server, self.clients, self.models):
            directory.mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict] = []
        self.server_eval: dict[int, float] = {}
        self.nodes = NodeNames()
        self.client_eval: dict[int, dict[int, float]] = {}  # node id -> round -> its held-out loss
        self._client_rounds: dict[tuple[int, int], dict] = {}
        self._client_dirs: dict[int, Path] = {}

    @classmethod
    def create(cls, base: Path, run_config: Mapping, run_id: int) -> RunOutputs:
        outputs = cls(new_run_dir(base))
        write_json_atomic(outputs.root / "run_config.json", {"run-id": run_id, "run-config": dict(run_config)})
        return outputs

    @classmethod
    def reopen(cls, root: Path, run_id: int) -> RunOutputs:
        """An interrupted run's directory, to carry on in (app.federation.resume): its metric history is read back, and the
        run id that continues it is added to run_config.json."""
        import json

        outputs = cls(root)
        metrics = outputs.server / "federated_metrics.json"
        outputs.rounds = json.loads(metrics.read_text())["rounds"] if metrics.exists() else []
        for path in outputs.server.glob("round_*_server_eval.json"):
            record = json.loads(path.read_text())
            outputs.server_eval[int(record["round"])] = record["eval-loss"]
        for path in outputs.clients.glob("client_*/round_*.json"):
            entry = json.loads(path.read_text())
            node_id = int(entry["node_id"])
            outputs.nodes.add(node_id, entry.get("name", path.parent.name.removeprefix("client_")))
            outputs._client_dirs[node_id] = path.parent
            outputs._client_rounds[(node_id, entry["round"])] = entry
            if "eval-loss" in entry.get("evaluate", {}):
                outputs.client_eval.setdefault(node_id, {})[entry["round"]] = entry["evaluate"]["eval-loss"]
        config = json.loads((root / "run_config.json").read_text())
        config["continued-by"] = [*config.get("continued-by", []), run_id]
        write_json_atomic(root / "run_config.json", config)
        return outputs

    @property
    def run_log(self) -> Path:
        return self.root / "run.log"

    @property
    def server_log(self) -> Path:
        return self.server / "server.log"

    def client_dir(self, node_id: int) -> Path:
        """clients/client_<name>, or client_<name>_node<id> when the name was shared by then. Chosen once per node,
        so a name that clashes later does not split a node's files."""
        if node_id not in self._client_dirs:
            name = self.nodes.names.get(node_id, str(node_id))
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            suffix = f"_node{node_id}" if self.nodes.shared(node_id) else ""
            self._client_dirs[node_id] = self.clients / f"client_{safe}{suffix}"
        return self._client_dirs[node_id]

    def record_client_reply(self, kind: str, server_round: int, name: str, node_id: int, dataset: str,
                            metrics: dict[str, float]) -> None:
        import json

        self.nodes.add(node_id, name)
        directory = self.client_dir(node_id)
        directory.mkdir(parents=True, exist_ok=True)
        entry = self._client_rounds.setdefault((node_id, server_round), {"round": server_round, "node_id": node_id,
                                                                         "name": name, "dataset": dataset})
        entry[kind] = metrics
        write_json_atomic(directory / f"round_{server_round}.json", entry)
        line = {"timestamp": dt.datetime.now(dt.UTC).isoformat(), "event": f"{kind}_reply", "round": server_round,
                "node_id": node_id, "dataset": dataset, **metrics}
        with open(directory / "client.log", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if kind == "evaluate" and "eval-loss" in metrics:
            self.client_eval.setdefault(node_id, {})[server_round] = metrics["eval-loss"]

    def record_server_eval(self, server_round: int, metrics: dict[str, float]) -> None:
        self.server_eval[server_round] = metrics["eval-loss"]
        write_json_atomic(self.server / f"round_{server_round}_server_eval.json", {"round": server_round, **metrics})

    def record_round(self, summary: dict) -> None:
        """Add a round's summary, or replace it: a round's client evaluation arrives with the next round's replies."""
        self.rounds = [r for r in self.rounds if r["round"] != summary["round"]] + [summary]
        self.rounds.sort(key=lambda r: r["round"])
        write_json_atomic(self.server / "federated_metrics.json", {"rounds": self.rounds})

    def model_card(self, run, server_round: int, node_datasets: dict[str, str], summary: dict,
                   wandb_url: str | None = None, chart: bool = False) -> str:
        from app.learning.checkpoint import render_model_card
        from app.learning.data import public_name
        from app.learning.model import public_model_name

        # A card may be published: it names datasets and models as nodes report them (Hub ids, local:<directory>),
        # and no path of this machine.
        datasets = sorted({public_name(d) for d in node_datasets.values()})
        facts = {
            "base model": public_model_name(run.model),
            "rounds": server_round,
            "nodes": len(node_datasets),
            "nodes (datasets)": ", ".join(f"{n} ({public_name(d)})" for n, d in sorted(node_datasets.items())),
            "strategy": f"FedProx, proximal-mu {run.proximal_mu}, "
                        + ("sample-weighted" if run.aggregation == "fedprox" else f"{run.aggregation} aggregation"),
            "local steps per round": run.local_steps if run.local_epochs == 0 else f"{run.local_epochs} epochs",
            "update encoding": run.update_encoding,
            "batch size": run.batch_size,
            "learning rate": f"{run.lr} (cosine over rounds to x{run.lr_min_ratio})",
            "server eval dataset": public_name(run.server_eval_dataset),
            "seed": run.seed,
            "run": self.root.name,
        }
        if wandb_url:
            facts["Weights & Biases run"] = wandb_url
        metrics = {"server eval loss (initial)": self.server_eval.get(0),
                   "server eval loss": summary.get("server-eval-loss"),
                   "client eval loss (weighted)": summary.get("client-eval-loss"),
                   "train loss (weighted)": summary.get("train-loss")}
        hub_datasets = [d.removeprefix("hf:") for d in (*datasets, public_name(run.server_eval_dataset))
                        if d.startswith("hf:")]
        base = public_model_name(run.model)
        return render_model_card(
            f"SmolVLA federated fine-tune, round {server_round}",
            "SmolVLA fine-tuned with federated learning (Flower, FedProx): each operator trained on its own "
            "SO-100 recordings, which never left its machine; only trainable weights were exchanged.",
            facts,
            {k: v for k, v in metrics.items() if v is not None},
            base_model=base if _is_hub_id(base) else "",
            datasets=sorted(set(hub_datasets)),
            chart=chart,
            repo_id=run.hf_repo_id,
        )

    def loss_chart(self, path: Path) -> Path:
        """The held-out losses so far (server, and each node's), as the model card shows them."""
        series = {"server": tuple(zip(*sorted(self.server_eval.items()))) or ((), ())}
        for name, losses in sorted(self.nodes.labelled(self.client_eval).items()):
            series[f"client {name}"] = tuple(zip(*sorted(losses.items())))
        return line_chart(path, series, "Held-out policy loss", "round", "loss")

    def write_history_and_charts(self) -> None:
        clients = sorted(self.nodes.labelled(self.client_eval).items())
        history = {
            "server": {str(r): v for r, v in sorted(self.server_eval.items())},
            "clients": {name: {str(r): v for r, v in sorted(c.items())} for name, c in clients},
        }
        write_json_atomic(self.server / "eval_policy_loss_history.json", history)
        self.loss_chart(self.server / "eval_policy_loss_chart.png")
        rounds = [r["round"] for r in self.rounds]
        line_chart(
            self.server / "federated_metrics.png",
            {
                "train loss (weighted)": (rounds, [_nan(r.get("train-loss")) for r in self.rounds]),
                "client eval loss (weighted)": (rounds, [_nan(r.get("client-eval-loss")) for r in self.rounds]),
                "server eval loss": (rounds, [_nan(r.get("server-eval-loss")) for r in self.rounds]),
            },
            "Federated metrics",
            "round",
            "loss",
        )


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _is_hub_id(model: str) -> bool:
    """A model name the Hub knows (owner/name), not embedded:tiny or a local:<directory>."""
    return model.count("/") == 1 and ":" not in model


def round_summary(server_round: int, lr: float, wall_seconds: float, train_metrics, client_eval, server_eval,
                  per_node: dict[str, dict], dropped: list[str], server_work: dict[str, float] | None = None,
                  traffic: dict[str, int] | None = None) -> dict:
    """One round of federated_metrics.json: the averaged metrics, the server's own work in seconds (evaluation,
    checkpoint), the model bytes it sent and received in all (`traffic`) and, per node, loss, samples, compute
    and bytes."""
    nodes = {}
    for name, kinds in per_node.items():
        train, evaluate = kinds.get("train", {}), kinds.get("evaluate", {})
        nodes[name] = {
            "train-loss": train.get("train-loss"),
            "eval-loss": evaluate.get("eval-loss"),
            "samples": train.get("num-examples"),
            "compute-seconds": train.get("compute-seconds"),
            "bytes-received": train.get("bytes-received"),
            "bytes-sent": train.get("bytes-sent"),
        }
    return {
        "round": server_round,
        "lr": lr,
        "wall-seconds": wall_seconds,
        "max-compute-seconds": max((n["compute-seconds"] or 0.0 for n in nodes.values()), default=0.0),
        "train-loss": float(train_metrics["train-loss"]),
        "client-eval-loss": float(client_eval["eval-loss"]) if client_eval else None,
        "server-eval-loss": float(server_eval["eval-loss"]) if server_eval else None,
        "bytes-sent": (traffic or {}).get("bytes-sent", 0),
        "bytes-received": (traffic or {}).get("bytes-received", 0),
        **(server_work or {}),
        "nodes": nodes,
        "dropped": dropped,
    }
