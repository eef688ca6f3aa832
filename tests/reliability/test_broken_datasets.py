"""Broken recordings on an operator's disk, read by the real LeRobot code a node starts with: each is refused with
one line naming the problem before the node joins, instead of failing in the middle of a round."""

from __future__ import annotations

import shutil

import pytest

from app.learning import embedded
from app.common.config import RunConfig
from app.common.errors import DatasetError
from app.learning.learner import check_node_dataset
from tests.helpers import write_dataset_with

pytestmark = pytest.mark.integration


def check(path) -> None:
    check_node_dataset(str(path), "embedded:tiny", 30, "auto", RunConfig().camera_map)


def operator_copy(tmp_path):
    return shutil.copytree(embedded.ensure_operator_dataset(0), tmp_path / "recordings")


def test_a_video_cut_short_is_refused_naming_the_episode(tmp_path, ledger):
    recordings = operator_copy(tmp_path)
    (video,) = (recordings / "videos" / "observation.images.wrist").rglob("*.mp4")
    video.write_bytes(video.read_bytes()[: video.stat().st_size * 2 // 5])  # the recorder lost power
    ledger.book("truncated video refused", faults=1)
    with pytest.raises(DatasetError, match=r"episode 15's first frame cannot be read .*re-encode or re-record"):
        check(recordings)


def test_a_damaged_data_file_is_refused(tmp_path, ledger):
    recordings = operator_copy(tmp_path)
    (parquet,) = (recordings / "data").rglob("*.parquet")
    parquet.write_bytes(b"not parquet at all")
    ledger.book("damaged parquet refused", faults=1)
    with pytest.raises(DatasetError, match="cannot be"):
        check(recordings)


def test_a_dataset_without_episodes_is_refused(tmp_path, ledger):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from app.learning.embedded.datasets import so100_features

    LeRobotDataset.create("test/empty", fps=30, features=so100_features(use_videos=False), root=tmp_path / "empty")
    ledger.book("dataset without episodes refused", faults=1)
    with pytest.raises(DatasetError, match="has no episodes"):
        check(tmp_path / "empty")


def test_a_sound_copy_passes(tmp_path):
    check(operator_copy(tmp_path))
    check(write_dataset_with(tmp_path / "images-only"))
