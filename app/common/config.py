"""Typed configuration, validated once at the edge with errors that name the key.

`RunConfig` is the federation's run-config (`[tool.flwr.app.config]` in pyproject.toml, overridable with
`flwr run --run-config`); `NodeConfig` is one SuperNode's `--node-config`. Both are plain frozen dataclasses: the
rest of the code never reads a raw mapping.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from app.common.errors import ConfigError

# The offline demo: tiny embedded SmolVLA and synthetic SO-100 operators. Everything else keeps its production
# default. A learning rate of 1e-3 suits the tiny random-weight policy (the real base is fine-tuned at 1e-4).
EMBEDDED_OVERRIDES: dict[str, Any] = {
    "model": "embedded:tiny",
    "server-eval-dataset": "embedded:server-eval",
    "partition-dataset": "embedded",
    "lr": 1e-3,
    "batch-size": 8,
}


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay that reaches `min_ratio` at the last step (`total - 1`)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def fedvla_home() -> Path:
    """This machine's fedvla directory (FEDVLA_HOME, default ~/.cache/fedvla): embedded artifacts, node logs."""
    return Path(os.environ.get("FEDVLA_HOME", Path.home() / ".cache" / "fedvla")).expanduser()


def _int(raw: Mapping[str, Any], key: str, default: int, minimum: int = 0) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return number


def _float(raw: Mapping[str, Any], key: str, default: float, low: float = 0.0, high: float = float("inf")) -> float:
    value = raw.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not low <= number <= high or number != number:
        raise ConfigError(f"{key} must be a number in [{low}, {high}], got {value!r}")
    return number


def _bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _str(raw: Mapping[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value.strip()


def _device(raw: Mapping[str, Any], key: str = "device") -> str:
    value = _str(raw, key, "auto")
    if value not in ("auto", "cpu") and not value.startswith(("cuda", "mps")):
        raise ConfigError(f"{key} must be auto, cpu, cuda[:N] or mps, got {value!r}")
    return value


# Camera settings that "auto" means for known base models. lerobot/smolvla_base was trained with cameras named
# camera1..3 (lerobot#2262); SO-100 recordings call theirs top and wrist. Any other model: all of its cameras, as
# named, and no renaming.
CAMERA_PRESETS = {"lerobot/smolvla_base": ("camera1,camera2", "top=camera1,wrist=camera2")}


def parse_camera_map(text: str, model: str = "", key: str = "camera-map") -> dict[str, str]:
    """'top=camera1,wrist=camera2' -> {"observation.images.top": "observation.images.camera1", ...}: the dataset's
    camera names on the left, the policy's on the right (LeRobot's rename_map, in short names). 'auto': the
    preset for `model`, else none."""
    if text.strip() == "auto":
        text = CAMERA_PRESETS.get(model, ("", ""))[1]
    mapping = {}
    for pair in text.replace(",", " ").split():
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            raise ConfigError(f"{key} must be 'dataset_camera=policy_camera' pairs like 'top=camera1,wrist=camera2', got {text!r}")
        mapping[f"observation.images.{source}"] = f"observation.images.{target}"
    return mapping


def parse_cameras(text: str, model: str = "") -> tuple[str, ...] | None:
    """'camera1,camera2' -> the policy camera keys a federation uses; '' -> all of the model's cameras; 'auto':
    the preset for `model`, else all."""
    if text.strip() == "auto":
        text = CAMERA_PRESETS.get(model, ("", ""))[0]
    names = text.replace(",", " ").split()
    return tuple(f"observation.images.{name}" for name in names) or None


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU: use device=cpu or auto")
    return device


# Flower's aggregations (flwr.serverapp.strategy) a run can choose for a round's screened updates. "fedprox" is the
# sample-weighted mean (FedAvg's server side: FedProx's proximal term acts on the nodes, whichever is chosen).
AGGREGATIONS = ("fedprox", "fedtrimmedavg", "fedmedian", "krum", "multikrum", "bulyan")
# app.federation.codec's encodings (kept here too, so reading a config needs neither NumPy nor Flower).
UPDATE_ENCODINGS = ("fp32", "bf16", "int8-delta", "int4-delta")
WIRE_LAYOUTS = ("packed", "per-array")
# Flower's server-side optimizers (flwr.serverapp.strategy) a run can apply to each round's aggregate: the aggregate
# minus the global weights is a pseudo-gradient, which FedAvgM steps with momentum and FedAdam, FedYogi and FedAdagrad
# with per-parameter adaptive steps (Hsu et al. 2019; Reddi et al. 2021). "none": the aggregate is the new model.
SERVER_OPTIMIZERS = ("none", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
# Their step sizes when server-lr is 0: Flower's defaults (FedAvgM's 1.0 is plain FedAvg plus momentum; the adaptive
# ones move every parameter by about server-lr a round, so theirs is much smaller).
SERVER_LR_DEFAULTS = {"fedavgm": 1.0, "fedadam": 0.1, "fedyogi": 0.01, "fedadagrad": 0.1}
# n >= a * f + b: the updates a round needs to withstand f hostile ones (the papers' bounds).
BYZANTINE_BOUNDS = {"fedmedian": (2, 1), "krum": (2, 3), "multikrum": (2, 3), "bulyan": (4, 3)}


def updates_needed(aggregation: str, malicious: int, trim_beta: float) -> int:
    """The fewest updates a round of `aggregation` needs to withstand `malicious` hostile ones; 0 when no number is
    enough (a trimmed mean that trims nothing)."""
    if aggregation == "fedprox" or (aggregation == "fedtrimmedavg" and malicious == 0):
        return 1
    if aggregation == "fedtrimmedavg":  # Flower cuts int(beta * n) updates from each end: n must make that f
        if trim_beta == 0.0:
            return 0
        n = max(1, int(malicious / trim_beta) - 1)
        while int(trim_beta * n) < malicious:  # Flower's own arithmetic, so the bound is exact
            n += 1
        return n
    per_hostile, base = BYZANTINE_BOUNDS[aggregation]
    return per_hostile * malicious + base


@dataclass(frozen=True)
class RunConfig:
    """The federation's settings, the same on the ServerApp and every ClientApp of a run."""

    num_server_rounds: int = 3
    local_epochs: int = 0  # 0: use local_steps
    local_steps: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    lr_min_ratio: float = 0.1
    weight_decay: float = 1e-10
    grad_clip_norm: float = 10.0
    proximal_mu: float = 0.01
    seed: int = 42
    model: str = "lerobot/smolvla_base"
    cameras: str = "auto"  # the policy cameras this federation uses; "" = all of the model's (see CAMERA_PRESETS)
    camera_map: str = "auto"  # dataset -> policy camera names for the datasets the run names (server eval, simulation)
    server_eval_dataset: str = "hf:lerobot/svla_so100_pickplace"
    partition_dataset: str = "embedded"
    heldout_fraction: float = 0.2
    fps: int = 30
    eval_frequency: int = 1
    checkpoint_interval: int = 10
    fraction_train: float = 1.0
    # share of connected nodes asked for their normalization stats before round 1 (at least min-train-nodes): a
    # federation of thousands estimates its stats from a seeded sample instead of asking every node
    stats_fraction: float = 1.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    min_replies: int = 1  # a round closes with the usable replies it has, if at least this many
    aggregation: str = "fedprox"  # one of AGGREGATIONS
    trim_beta: float = 0.2  # fedtrimmedavg: share of updates cut from each end (Flower's default)
    num_malicious_nodes: int = 1  # hostile nodes a robust aggregation must withstand (checked against min-train-nodes)
    # Replies larger than this are dropped before their arrays are decoded (0: no cap). An honest update is exactly
    # the size of the trainable weights (smolvla_base: 400 MB fp32): 1024 MB leaves room for a larger trainable part
    # while a node cannot make the server decode gigabytes; raise it when training more of a bigger model.
    max_update_mb: float = 1024.0
    update_encoding: str = "int8-delta"  # how weights travel, both ways: one of app.federation.codec.ENCODINGS (README)
    # "packed": an update is one safetensors buffer, a handful of Flower objects; "per-array": one Flower Array per
    # wire array, each its own request (kept to measure the difference, bench/federated_rounds.py)
    wire_layout: str = "packed"
    server_optimizer: str = "none"  # one of SERVER_OPTIMIZERS, applied to each round's aggregate
    server_lr: float = 0.0  # the server optimizer's step size; 0: its default (SERVER_LR_DEFAULTS)
    server_momentum: float = 0.9  # FedAvgM's momentum; FedAdam's and FedYogi's beta_1 (FedAdagrad has none)
    # AdamW's moments carried from one round to the next on a node that stays warm (restarted every round otherwise)
    keep_optimizer_state: bool = False
    round_timeout: float = 1800.0  # seconds a round waits for replies (a lost node is noticed sooner, by heartbeat)
    node_wait_timeout: float = 600.0  # seconds to wait for min-available-nodes before the run gives up
    early_stop_patience: int = 0  # 0: never stop early
    early_stop_min_delta: float = 0.0
    hf_repo_id: str = ""
    hf_private: bool = True  # the weights come from operators' private recordings: publishing is a choice
    use_wandb: bool = False
    device: str = "auto"
    output_dir: str = "outputs"
    # "latest": carry on this run-config's interrupted run, if any (app.federation.resume); a checkpoint directory of an earlier
    # run, on the server's machine; "": always start afresh
    resume_from: str = "latest"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RunConfig:
        known = {f.name.replace("_", "-") for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown run-config key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        d = cls()
        config = cls(
            num_server_rounds=_int(raw, "num-server-rounds", d.num_server_rounds, 1),
            local_epochs=_int(raw, "local-epochs", d.local_epochs, 0),
            local_steps=_int(raw, "local-steps", d.local_steps, 1),
            batch_size=_int(raw, "batch-size", d.batch_size, 1),
            lr=_float(raw, "lr", d.lr, 0.0, 1.0),
            lr_min_ratio=_float(raw, "lr-min-ratio", d.lr_min_ratio, 0.0, 1.0),
            weight_decay=_float(raw, "weight-decay", d.weight_decay, 0.0, 1.0),
            grad_clip_norm=_float(raw, "grad-clip-norm", d.grad_clip_norm, 0.0),
            proximal_mu=_float(raw, "proximal-mu", d.proximal_mu, 0.0),
            seed=_int(raw, "seed", d.seed, 0),
            model=_str(raw, "model", d.model),
            cameras=_str(raw, "cameras", d.cameras),
            camera_map=_str(raw, "camera-map", d.camera_map),
            server_eval_dataset=_str(raw, "server-eval-dataset", d.server_eval_dataset),
            partition_dataset=_str(raw, "partition-dataset", d.partition_dataset),
            heldout_fraction=_float(raw, "heldout-fraction", d.heldout_fraction, 0.01, 0.9),
            fps=_int(raw, "fps", d.fps, 1),
            eval_frequency=_int(raw, "eval-frequency", d.eval_frequency, 1),
            checkpoint_interval=_int(raw, "checkpoint-interval", d.checkpoint_interval, 1),
            fraction_train=_float(raw, "fraction-train", d.fraction_train, 0.0, 1.0),
            stats_fraction=_float(raw, "stats-fraction", d.stats_fraction, 0.0, 1.0),
            min_train_nodes=_int(raw, "min-train-nodes", d.min_train_nodes, 1),
            min_available_nodes=_int(raw, "min-available-nodes", d.min_available_nodes, 1),
            min_replies=_int(raw, "min-replies", d.min_replies, 1),
            aggregation=_str(raw, "aggregation", d.aggregation).lower(),
            trim_beta=_float(raw, "trim-beta", d.trim_beta, 0.0, 0.5),
            num_malicious_nodes=_int(raw, "num-malicious-nodes", d.num_malicious_nodes, 0),
            max_update_mb=_float(raw, "max-update-mb", d.max_update_mb, 0.0),
            update_encoding=_str(raw, "update-encoding", d.update_encoding).lower(),
            wire_layout=_str(raw, "wire-layout", d.wire_layout).lower(),
            server_optimizer=_str(raw, "server-optimizer", d.server_optimizer).lower(),
            server_lr=_float(raw, "server-lr", d.server_lr, 0.0, 10.0),
            server_momentum=_float(raw, "server-momentum", d.server_momentum, 0.0, 0.999),
            keep_optimizer_state=_bool(raw, "keep-optimizer-state", d.keep_optimizer_state),
            round_timeout=_float(raw, "round-timeout", d.round_timeout, 1.0),
            node_wait_timeout=_float(raw, "node-wait-timeout", d.node_wait_timeout, 1.0),
            early_stop_patience=_int(raw, "early-stop-patience", d.early_stop_patience, 0),
            early_stop_min_delta=_float(raw, "early-stop-min-delta", d.early_stop_min_delta, 0.0),
            hf_repo_id=_str(raw, "hf-repo-id", d.hf_repo_id),
            hf_private=_bool(raw, "hf-private", d.hf_private),
            use_wandb=_bool(raw, "use-wandb", d.use_wandb),
            device=_device(raw),
            output_dir=_str(raw, "output-dir", d.output_dir),
            resume_from=_str(raw, "resume-from", d.resume_from),
        )
        if config.fraction_train == 0.0:
            raise ConfigError("fraction-train must be above 0: a round with no training nodes trains nothing")
        if config.stats_fraction == 0.0:
            raise ConfigError("stats-fraction must be above 0: the federation's normalization needs some nodes' stats")
        if config.min_available_nodes < config.min_train_nodes:
            raise ConfigError("min-available-nodes must be >= min-train-nodes")
        if config.hf_repo_id and config.hf_repo_id.count("/") != 1:
            raise ConfigError(f"hf-repo-id must look like <user>/<model>, got {config.hf_repo_id!r}")
        if not config.model:
            raise ConfigError("model must name a Hub id, a checkpoint directory or embedded:tiny")
        parse_camera_map(config.camera_map, config.model)
        if config.update_encoding not in UPDATE_ENCODINGS:
            raise ConfigError(f"update-encoding must be one of {', '.join(UPDATE_ENCODINGS)}, got {config.update_encoding!r}")
        if config.wire_layout not in WIRE_LAYOUTS:
            raise ConfigError(f"wire-layout must be one of {', '.join(WIRE_LAYOUTS)}, got {config.wire_layout!r}")
        if config.server_optimizer not in SERVER_OPTIMIZERS:
            raise ConfigError(f"server-optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, got {config.server_optimizer!r}")
        config._check_aggregation()
        return config

    def _check_aggregation(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.trim_beta >= 0.5:
            raise ConfigError(f"trim-beta must be below 0.5 (the share cut from each end), got {self.trim_beta}")
        f = self.num_malicious_nodes
        if self.updates_needed == 0:
            raise ConfigError(f"aggregation=fedtrimmedavg with trim-beta=0 trims nothing, so it cannot withstand "
                              f"num-malicious-nodes={f}: set trim-beta above 0 (and below 0.5)")
        if self.min_train_nodes < self.updates_needed:
            rule = ("it cuts int(trim-beta x updates) from each end" if self.aggregation == "fedtrimmedavg"
                    else "{} x num-malicious-nodes + {}".format(*BYZANTINE_BOUNDS[self.aggregation]))
            raise ConfigError(
                f"aggregation={self.aggregation} withstands num-malicious-nodes={f} only with at least "
                f"{self.updates_needed} updates a round ({rule}), but min-train-nodes={self.min_train_nodes}: raise "
                f"min-train-nodes and min-available-nodes to {self.updates_needed}, or lower num-malicious-nodes"
                + (" (or raise trim-beta)" if self.aggregation == "fedtrimmedavg" else ""))

    @property
    def server_step(self) -> float:
        """The server optimizer's step size: server-lr, or the chosen optimizer's default."""
        return self.server_lr or SERVER_LR_DEFAULTS.get(self.server_optimizer, 1.0)

    @property
    def updates_needed(self) -> int:
        """The fewest usable updates the chosen aggregation needs a round (1 for fedprox)."""
        return updates_needed(self.aggregation, self.num_malicious_nodes, self.trim_beta)

    def steps_for(self, train_samples: int) -> int:
        """Local optimizer steps per round: local-epochs passes over the data, else local-steps."""
        if self.local_epochs > 0:
            return self.local_epochs * -(-train_samples // self.batch_size)
        return self.local_steps

    def round_lr(self, server_round: int) -> float:
        """Cosine decay of the learning rate across rounds, from lr at round 1 to lr * lr-min-ratio at the last."""
        return self.lr * lr_factor(server_round - 1, self.num_server_rounds, 0, self.lr_min_ratio)


@dataclass(frozen=True)
class NodeConfig:
    """One SuperNode's settings: where its data is (deployment) or which simulated partition it is."""

    dataset_uri: str = ""
    partition_id: int | None = None
    num_partitions: int | None = None
    name: str = ""
    camera_map: str | None = None  # this node's dataset camera names -> the policy's; None: the run's camera-map
    worker_socket: str = ""  # the node's warm worker (app/node/worker.py), set by `fedvla node`; "" = work in-process
    worker_stall_seconds: float = 1800.0  # a worker making no progress this long is restarted

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> NodeConfig:
        has_partition = "partition-id" in raw or "num-partitions" in raw
        config = cls(
            dataset_uri=_str(raw, "dataset-uri", ""),
            partition_id=_int(raw, "partition-id", 0, 0) if has_partition else None,
            num_partitions=_int(raw, "num-partitions", 1, 1) if has_partition else None,
            name=_str(raw, "name", ""),
            camera_map=_str(raw, "camera-map", "") if "camera-map" in raw else None,
            worker_socket=_str(raw, "worker-socket", ""),
            worker_stall_seconds=_float(raw, "worker-stall-seconds", 1800.0, 1.0),
        )
        if config.camera_map is not None:
            parse_camera_map(config.camera_map)
        if not config.dataset_uri and not has_partition:
            raise ConfigError(
                "node-config needs dataset-uri (hf:<repo_id> or a local LeRobot dataset path), "
                'e.g. flower-supernode --node-config "dataset-uri=/data/my_so100"'
            )
        if has_partition and config.partition_id >= config.num_partitions:
            raise ConfigError(f"partition-id {config.partition_id} must be below num-partitions {config.num_partitions}")
        return config

    def label(self) -> str:
        if self.name:
            return self.name
        if self.partition_id is not None:
            return f"partition_{self.partition_id}"
        return self.dataset_uri.rstrip("/").rsplit("/", 1)[-1]
