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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import DatasetError

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

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
        repo_id = uri[3:]
        if repo_id.count("/") != 1:
            raise DatasetError(f"dataset URI {uri!r}: a Hub dataset is hf:<owner>/<name>")
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
    from app import embedded

    name = uri.removeprefix("embedded:")
    if name == "server-eval":
        return embedded.ensure_server_eval_dataset()
    if name.startswith("operator-") and name[9:].isdigit():
        return embedded.ensure_operator_dataset(int(name[9:]))
    raise DatasetError(f"dataset URI {uri!r}: embedded datasets are embedded:operator-<i> and embedded:server-eval")


def open_metadata(ref: DatasetRef) -> LeRobotDatasetMetadata:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    try:
        return LeRobotDatasetMetadata(ref.repo_id, root=ref.root)
    except Exception as exc:  # LeRobot raises many kinds here: version, network, missing files
        raise DatasetError(f"dataset {ref.uri!r} cannot be opened: {type(exc).__name__}: {exc}") from exc


def validate_schema(
    meta: LeRobotDatasetMetadata, schema: PolicySchema, uri: str, camera_map: dict[str, str] | None = None
) -> None:
    """Fail with one message naming the first key that does not fit the policy (cameras after `camera_map`)."""
    camera_map = camera_map or {}
    features = {camera_map.get(k, k): v for k, v in meta.features.items()}
    for key, want in ((STATE_KEY, schema.state_dim), (ACTION_KEY, schema.action_dim)):
        if key not in features:
            raise DatasetError(f"dataset {uri!r} has no {key!r} feature, which the policy needs")
        shape = tuple(features[key]["shape"])
        if shape != (want,):
            raise DatasetError(
                f"dataset {uri!r}: {key!r} has shape {shape}, the policy expects ({want},); "
                "record with the same robot, or start from a policy made for this one"
            )
    for camera in schema.cameras:
        if camera not in features:
            present = sorted(k.removeprefix(IMAGE_PREFIX) for k in meta.features if k.startswith(IMAGE_PREFIX))
            raise DatasetError(
                f"dataset {uri!r} has no camera {camera!r} (it has {present}); the policy expects it: "
                f"map one of yours onto it with camera-map, e.g. '{(present or ['top'])[0]}={camera.removeprefix(IMAGE_PREFIX)}'"
            )
        if features[camera]["dtype"] not in ("video", "image"):
            raise DatasetError(f"dataset {uri!r}: {camera!r} is not an image or video feature")
    if schema.fps is not None and meta.fps != schema.fps:
        raise DatasetError(f"dataset {uri!r} is recorded at {meta.fps} fps, the policy expects {schema.fps} fps")


def open_checked(
    uri: str, schema: PolicySchema, camera_map: dict[str, str] | None = None
) -> tuple[DatasetRef, LeRobotDatasetMetadata]:
    """Resolve a dataset URI and read its metadata, failing with a clear message if it does not fit the policy."""
    ref = resolve_dataset_uri(uri)
    meta = open_metadata(ref)
    validate_schema(meta, schema, uri, camera_map)
    return ref, meta


def split_episodes(num_episodes: int, heldout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split episode indices into (train, held-out), by a seeded shuffle; both sides get at least one episode."""
    if num_episodes < 2:
        raise DatasetError(f"a dataset needs at least 2 episodes to hold one out for evaluation, it has {num_episodes}")
    order = list(range(num_episodes))
    random.Random(seed).shuffle(order)
    heldout = min(num_episodes - 1, max(1, math.ceil(num_episodes * heldout_fraction)))
    return sorted(order[heldout:]), sorted(order[:heldout])


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
    """A node's view of its dataset: training and held-out episodes, and the dataset's metadata (whose stats,
    as LeRobot computes them, cover all episodes)."""

    ref: DatasetRef
    meta: LeRobotDatasetMetadata
    train: LeRobotDataset | CameraRenamed
    heldout: LeRobotDataset | CameraRenamed


def load_node_data(
    uri: str,
    schema: PolicySchema,
    delta_timestamps_for,
    heldout_fraction: float,
    seed: int,
    partition: tuple[int, int] | None = None,
    camera_map: dict[str, str] | None = None,
) -> NodeData:
    """Open, validate and split a dataset. `delta_timestamps_for(meta)` gives the policy's action chunk offsets;
    `camera_map` renames the dataset's cameras to the policy's."""
    ref, meta = open_checked(uri, schema, camera_map)
    episodes = list(range(meta.total_episodes))
    if partition is not None:
        episodes = partition_episodes(episodes, *partition)
    train_idx, heldout_idx = split_episodes(len(episodes), heldout_fraction, seed)
    delta = delta_timestamps_for(meta)
    return NodeData(
        ref=ref,
        meta=meta,
        train=rename_cameras(open_dataset(ref, [episodes[i] for i in train_idx], delta), camera_map),
        heldout=rename_cameras(open_dataset(ref, [episodes[i] for i in heldout_idx], delta), camera_map),
    )
