"""Datasets: a dataset URI -> a LeRobotDataset; schema checks against the policy; episode splits.

A dataset URI is one of
  hf:<repo_id>            a LeRobot dataset on the Hugging Face Hub (v3 format), cached by LeRobot;
  <path>                  a LeRobot dataset directory on this machine (it holds meta/info.json);
  embedded:operator-<i>   the embedded synthetic recordings of simulated operator i (generated on first use);
  embedded:server-eval    the embedded held-out recordings used for server-side evaluation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.common.errors import DatasetError
from app.common.telemetry import get_logger

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

log = get_logger(__name__)

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
VIDEO_BACKEND = "pyav"  # bundled with PyAV's wheels; torchcodec additionally needs the system's FFmpeg


@dataclass(frozen=True)
class PolicySchema:
    """What a policy needs from a dataset: state and action widths, camera keys, and frame rate."""

    state_dim: int
    action_dim: int
    cameras: tuple[str, ...]  # full feature keys, e.g. "observation.images.front"
    fps: int | None = None


@dataclass(frozen=True)
class DatasetRef:
    """Where LeRobot finds a dataset: a repo id, and a local root unless it comes from the Hub."""

    uri: str
    repo_id: str
    root: Path | None


def resolve_dataset_uri(uri: str) -> DatasetRef:
    uri = uri.strip()
    if not uri:
        raise DatasetError("dataset URI is empty: give hf:<repo_id>, a local dataset directory, or embedded:<name>")
    if uri.startswith("hf:"):
        from app.learning.hub import hub_id_problem

        repo_id = uri[3:]
        if (why := hub_id_problem(repo_id)) is not None:
            raise DatasetError(f"dataset URI {uri!r}: a Hub dataset is hf:<owner>/<name> ({why})")
        return DatasetRef(uri, repo_id, None)
    if uri.startswith("embedded:"):
        return DatasetRef(uri, f"fedvla/{uri[9:]}", _embedded_dataset_path(uri))
    path = Path(uri).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path {str(path)!r} does not exist: check the path, or use hf:<repo_id> for the Hub")
    if not (path / "meta" / "info.json").is_file():
        raise DatasetError(
            f"dataset path {str(path)!r} is not a LeRobot dataset (no meta/info.json): point at the dataset's root directory"
        )
    return DatasetRef(uri, f"local/{path.name}", path)


def public_name(uri: str) -> str:
    """How a node's dataset is named to the server, in reports and model cards: Hub and embedded URIs as they are,
    a local path by its directory name only (an operator's file system layout stays on its machine). A name that
    is public already stays as it is, so the server can apply this to whatever a node reports."""
    if not uri or uri.startswith(("hf:", "embedded:", "local:")):
        return uri
    return f"local:{Path(uri).expanduser().name}"


def _embedded_dataset_path(uri: str) -> Path:
    from app.learning import embedded
    name = uri.removeprefix("embedded:")
    if name == "server-eval":
        return embedded.ensure_server_eval_dataset()
    if name.startswith("operator-") and name[9:].isdigit():
        return embedded.ensure_operator_dataset(int(name[9:]))
    raise DatasetError(f"dataset URI {uri!r}: embedded datasets are embedded:operator-<i> and embedded:server-eval")


def open_metadata(ref: DatasetRef) -> LeRobotDatasetMetadata:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    if ref.root is None:  # on the Hub: LeRobot keeps what it fetched under HF_LEROBOT_HOME/<repo_id>
        from lerobot.utils.constants import HF_LEROBOT_HOME

        from app.learning.hub import unreachable_hub

        if problem := unreachable_hub(f"dataset {ref.uri!r}", (HF_LEROBOT_HOME / ref.repo_id / "meta" / "info.json").is_file()):
            raise DatasetError(problem)
    try:
        return LeRobotDatasetMetadata(ref.repo_id, root=ref.root)
    except Exception as exc:  # LeRobot raises many kinds here: version, network, missing files
        raise DatasetError(f"dataset {ref.uri!r} cannot be opened: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Finding:
    """One thing a dataset must have for the policy: whether it does, and in what words."""

    item: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class SchemaFit:
    """How a dataset fits a policy: every finding, and the settings that would fix what can be fixed."""

    uri: str
    findings: list[Finding]
    camera_map: str = ""  # a camera-map that gives the policy every camera, where the recording has enough
    fps: int | None = None  # the dataset's frame rate, where it is not the policy's

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def error(self) -> str:
        problems = "; ".join(f.detail for f in self.findings if not f.ok)
        fixes = [f"camera-map '{self.camera_map}'" if self.camera_map else "",
                 f"fps={self.fps} for the whole federation (or record at the policy's rate)" if self.fps else ""]
        fixes = [fix for fix in fixes if fix]
        return f"dataset {self.uri!r}: {problems}" + (f"; would fit with {' and '.join(fixes)}" if fixes else "")


def schema_fit(
    meta: LeRobotDatasetMetadata, schema: PolicySchema, uri: str, camera_map: dict[str, str] | None = None
) -> SchemaFit:
    """Check every key the policy needs (cameras after `camera_map`) and work out the fixes."""
    camera_map = camera_map or {}
    features = {camera_map.get(k, k): v for k, v in meta.features.items()}
    findings = []
    for key, want in ((STATE_KEY, schema.state_dim), (ACTION_KEY, schema.action_dim)):
        if key not in features:
            findings.append(Finding(key, False, f"no {key!r} feature, which the policy needs"))
            continue
        shape = tuple(features[key]["shape"])
        findings.append(Finding(key, shape == (want,), f"{key!r} has shape {shape}" if shape == (want,) else
                                f"{key!r} has shape {shape}, the policy expects ({want},): record with the same "
                                "robot, or start from a policy made for this one"))
    recorded = [k for k in meta.features if k.startswith(IMAGE_PREFIX)]
    present = sorted(k.removeprefix(IMAGE_PREFIX) for k in recorded)
    missing = []
    for camera in schema.cameras:
        short = camera.removeprefix(IMAGE_PREFIX)
        if camera not in features:
            missing.append(camera)
            findings.append(Finding(camera, False, f"no camera {camera!r} (it has {present}); the policy expects it: "
                                    f"map one of yours onto it with camera-map, e.g. '{(present or ['top'])[0]}={short}'"))
        elif features[camera]["dtype"] not in ("video", "image"):
            findings.append(Finding(camera, False, f"{camera!r} is not an image or video feature"))
        else:
            source = next((k for k, v in camera_map.items() if v == camera and k in meta.features), camera)
            findings.append(Finding(camera, True, f"camera {short!r} is the recording's "
                                                  f"{source.removeprefix(IMAGE_PREFIX)!r}"))
    fps_ok = schema.fps is None or meta.fps == schema.fps
    findings.append(Finding("fps", fps_ok, f"recorded at {meta.fps} fps" if fps_ok else
                            f"recorded at {meta.fps} fps, the policy expects {schema.fps} fps"))
    return SchemaFit(uri, findings, _camera_map_fix(schema.cameras, recorded, camera_map, missing),
                     None if fps_ok else meta.fps)


def _camera_map_fix(cameras: tuple[str, ...], recorded: list[str], camera_map: dict[str, str],
                    missing: list[str]) -> str:
    """A camera-map giving the policy every camera: the map as it is, plus unused recorded cameras for the missing
    policy cameras in order (the operator checks the pairing); "" if nothing is missing or too few are recorded."""
    used = {k for k, v in camera_map.items() if v in cameras} | {c for c in cameras if c in recorded}
    spare = [k for k in sorted(recorded) if k not in used]
    if not missing or len(spare) < len(missing):
        return ""
    pairs = {**{k: v for k, v in camera_map.items() if v in cameras}, **dict(zip(spare, missing))}
    return ",".join(f"{k.removeprefix(IMAGE_PREFIX)}={v.removeprefix(IMAGE_PREFIX)}" for k, v in pairs.items())


def validate_schema(
    meta: LeRobotDatasetMetadata, schema: PolicySchema, uri: str, camera_map: dict[str, str] | None = None
) -> None:
    """Fail with one message naming every key that does not fit the policy, and the settings that would fix it."""
    fit = schema_fit(meta, schema, uri, camera_map)
    if not fit.ok:
        raise DatasetError(fit.error())


def open_checked(
    uri: str, schema: PolicySchema, camera_map: dict[str, str] | None = None
) -> tuple[DatasetRef, LeRobotDatasetMetadata]:
    """Resolve a dataset URI and read its metadata, failing with a clear message if it does not fit the policy."""
    ref = resolve_dataset_uri(uri)
    meta = open_metadata(ref)
    validate_schema(meta, schema, uri, camera_map)
    return ref, meta


def split_episodes(
    num_episodes: int, heldout_fraction: float, seed: int, tasks: Sequence[Hashable] | None = None
) -> tuple[list[int], list[int]]:
    """Split episode indices into (train, held-out) by a seeded shuffle; both sides get at least one episode.

    With `tasks` (one key per episode) the split is stratified: every task with at least two episodes keeps one
    for training and holds at least one out, so the held-out loss speaks for each task the node trains on. That
    can take the held-out share above `heldout_fraction` when there are many small tasks; the rest of the quota
    goes to the tasks in proportion to their episodes. One task (or none given) splits as a plain seeded shuffle.
    """
    if num_episodes < 2:
        raise DatasetError(f"a dataset needs at least 2 episodes to hold one out for evaluation, it has {num_episodes}")
    if tasks is not None and len(tasks) != num_episodes:
        raise DatasetError(f"{len(tasks)} episode tasks given for {num_episodes} episodes")
    rng = random.Random(seed)
    groups: dict[Hashable, list[int]] = {}
    for episode, task in enumerate(tasks if tasks is not None else [None] * num_episodes):
        groups.setdefault(task, []).append(episode)
    # The groups' shuffles come first from the seed, so a single task splits exactly as an unstratified shuffle.
    for members in groups.values():
        rng.shuffle(members)
    target = min(num_episodes - 1, max(1, math.ceil(num_episodes * heldout_fraction)))
    quotas = _heldout_quotas({task: len(members) for task, members in groups.items()}, target, rng)
    heldout = [e for task, members in groups.items() for e in members[: quotas[task]]]
    train = [e for task, members in groups.items() for e in members[quotas[task]:]]
    return sorted(train), sorted(heldout)


def _heldout_quotas(sizes: dict[Hashable, int], target: int, rng: random.Random) -> dict[Hashable, int]:
    """Held-out episodes per task: `target` in all, shared by largest remainder of each task's proportional share,
    within [1, size - 1] for a task of two or more episodes (one to evaluate, one to train) and [0, 1] otherwise."""
    total = sum(sizes.values())
    ideal = {task: size * target / total for task, size in sizes.items()}
    low = {task: 1 if size >= 2 else 0 for task, size in sizes.items()}
    high = {task: size - 1 if size >= 2 else size for task, size in sizes.items()}
    quotas = {task: min(high[task], max(low[task], math.floor(ideal[task]))) for task in sizes}
    order = list(sizes)
    rng.shuffle(order)  # breaks ties between equal remainders without favouring the first task seen
    while sum(quotas.values()) < target:
        task = max((t for t in order if quotas[t] < high[t]), key=lambda t: ideal[t] - quotas[t])
        quotas[task] += 1
    while sum(quotas.values()) > target:
        reducible = [t for t in order if quotas[t] > low[t]]
        if not reducible:  # every multi-episode task holds out its one: more than the target, on purpose
            break
        quotas[min(reducible, key=lambda t: ideal[t] - quotas[t])] -= 1
    return quotas


def episode_tasks(meta: LeRobotDatasetMetadata, episodes: Sequence[int]) -> list[tuple[str, ...]]:
    """Each episode's tasks (LeRobot v3 lists them per episode in meta/episodes), as one hashable key."""
    if meta.episodes is None:
        return [() for _ in episodes]
    tasks = meta.episodes["tasks"]
    return [tuple(sorted(tasks[e])) for e in episodes]


def partition_episodes(episodes: Sequence[int], partition_id: int, num_partitions: int) -> list[int]:
    """The episodes of simulated node `partition_id` when one dataset is shared among `num_partitions` nodes."""
    if not 0 <= partition_id < num_partitions:
        raise DatasetError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    mine = list(episodes)[partition_id::num_partitions]
    if len(mine) < 2:
        raise DatasetError(
            f"partition {partition_id} of {num_partitions} gets {len(mine)} episode(s); use fewer partitions or more data"
        )
    return mine


def open_dataset(
    ref: DatasetRef, episodes: Sequence[int] | None, delta_timestamps: dict[str, list[float]] | None
) -> LeRobotDataset:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        return LeRobotDataset(
            ref.repo_id,
            root=ref.root,
            episodes=list(episodes) if episodes is not None else None,
            delta_timestamps=delta_timestamps,
            video_backend=VIDEO_BACKEND,
        )
    except Exception as exc:
        raise DatasetError(f"dataset {ref.uri!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def probe_frames(ref: DatasetRef, meta: LeRobotDatasetMetadata) -> None:
    """Read the first frame of the first and of the last episode, videos decoded: a recording cut short or a codec
    this machine cannot decode fails here, when the node starts, instead of in the middle of a round."""
    if meta.total_episodes == 0:
        raise DatasetError(f"dataset {ref.uri!r} has no episodes: record some, or point at another dataset")
    for episode in sorted({0, meta.total_episodes - 1}):
        try:
            open_dataset(ref, [episode], None)[0]
        except Exception as exc:
            raise DatasetError(f"dataset {ref.uri!r}: episode {episode}'s first frame cannot be read "
                               f"({type(exc).__name__}: {exc}): re-encode or re-record that episode") from exc


class CameraRenamed:
    """A map-style dataset whose samples carry the policy's camera keys instead of the recording's."""

    def __init__(self, inner: LeRobotDataset, camera_map: dict[str, str]):
        self.inner, self.camera_map = inner, camera_map
        self.episodes, self.meta = inner.episodes, inner.meta

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        return {self.camera_map.get(k, k): v for k, v in self.inner[index].items()}


def rename_cameras(dataset: LeRobotDataset, camera_map: dict[str, str] | None):
    return CameraRenamed(dataset, camera_map) if camera_map else dataset


@dataclass
class NodeData:
    """A node's view of its dataset: training and held-out episodes (indices into the whole dataset), and the
    dataset's metadata (whose stats, as LeRobot computes them, cover all its episodes). An evaluation-only view
    (the server's) has no training side: every episode is held out."""

    ref: DatasetRef
    meta: LeRobotDatasetMetadata
    train: LeRobotDataset | CameraRenamed | None
    heldout: LeRobotDataset | CameraRenamed
    train_episodes: list[int]
    heldout_episodes: list[int]


def load_node_data(
    uri: str,
    schema: PolicySchema,
    delta_timestamps_for,
    heldout_fraction: float,
    seed: int,
    partition: tuple[int, int] | None = None,
    camera_map: dict[str, str] | None = None,
    evaluation_only: bool = False,
) -> NodeData:
    """Open, validate and split a dataset. `delta_timestamps_for(meta)` gives the policy's action chunk offsets;
    `camera_map` renames the dataset's cameras to the policy's. With `evaluation_only` nothing is trained on, so
    every episode (of the partition, if one is given) is held out instead of `heldout_fraction` of them."""
    ref, meta = open_checked(uri, schema, camera_map)
    episodes = list(range(meta.total_episodes))
    if partition is not None:
        episodes = partition_episodes(episodes, *partition)
    tasks = episode_tasks(meta, episodes)
    if evaluation_only:
        if not episodes:
            raise DatasetError(f"dataset {uri!r} has no episodes to evaluate on: record some, or point at another one")
        train_idx, heldout_idx = [], list(range(len(episodes)))
    else:
        train_idx, heldout_idx = split_episodes(len(episodes), heldout_fraction, seed, tasks)
    train_episodes, heldout_episodes = [episodes[i] for i in train_idx], [episodes[i] for i in heldout_idx]
    log.info("dataset_split", dataset=public_name(uri), evaluation_only=evaluation_only,
             train_episodes=len(train_episodes), heldout_episodes=len(heldout_episodes),
             tasks=len(set(tasks)), heldout_tasks=len({tasks[i] for i in heldout_idx}))
    delta = delta_timestamps_for(meta)
    return NodeData(
        ref=ref,
        meta=meta,
        train=rename_cameras(open_dataset(ref, train_episodes, delta), camera_map) if train_episodes else None,
        heldout=rename_cameras(open_dataset(ref, heldout_episodes, delta), camera_map),
        train_episodes=train_episodes,
        heldout_episodes=heldout_episodes,
    )


def frame_stats(dataset: LeRobotDataset | CameraRenamed, keys: Sequence[str] = (STATE_KEY, ACTION_KEY)) -> dict:
    """LeRobot's stats (mean, std, min, max, count, quantiles) of the vector features `keys` over exactly the frames
    `dataset` holds: its episodes' parquet rows are read, no video is decoded."""
    import numpy as np
    from lerobot.datasets.compute_stats import get_feature_stats

    inner = dataset.inner if isinstance(dataset, CameraRenamed) else dataset
    columns = inner.hf_dataset.with_format("numpy", columns=list(keys))[:]  # a formatted copy: the original stays torch
    # float64, as LeRobot's stats.json holds them: float32 sums over many frames would drift in the last digits.
    return {key: get_feature_stats(columns[key].astype(np.float64), axis=0, keepdims=False) for key in keys}
