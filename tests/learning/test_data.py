from collections import Counter

import numpy as np
import pytest

from app.learning import data
from app.learning.data import PolicySchema
from app.common.errors import DatasetError
from tests.helpers import write_dataset_with

SCHEMA = PolicySchema(6, 6, ("observation.images.front", "observation.images.wrist"), 30)


def test_split_is_deterministic_disjoint_and_complete():
    train, heldout = data.split_episodes(10, 0.2, seed=3)
    assert (train, heldout) == data.split_episodes(10, 0.2, seed=3)
    assert sorted(train + heldout) == list(range(10))
    assert len(heldout) == 2
    assert data.split_episodes(10, 0.2, seed=4) != (train, heldout)


def test_split_keeps_one_episode_each_side():
    assert data.split_episodes(2, 0.9, 0) in (([0], [1]), ([1], [0]))
    with pytest.raises(DatasetError, match="at least 2 episodes"):
        data.split_episodes(1, 0.2, 0)


def test_a_single_task_splits_as_a_plain_seeded_shuffle():
    for seed in range(5):
        assert data.split_episodes(12, 0.2, seed, ["pick"] * 12) == data.split_episodes(12, 0.2, seed)


def _heldout_per_task(tasks: list[str], heldout: list[int]) -> Counter:
    return Counter(tasks[e] for e in heldout)


def test_every_task_with_two_episodes_gets_one_held_out_and_keeps_one_to_train():
    tasks = ["a"] * 6 + ["b"] * 3 + ["c"] * 2 + ["d"]  # 12 episodes: 0.2 of them is 3, one per multi-episode task
    for seed in range(20):
        train, heldout = data.split_episodes(len(tasks), 0.2, seed, tasks)
        assert (train, heldout) == data.split_episodes(len(tasks), 0.2, seed, tasks)
        assert sorted(train + heldout) == list(range(len(tasks)))
        assert _heldout_per_task(tasks, heldout) == {"a": 1, "b": 1, "c": 1}
        assert {tasks[e] for e in train} == {"a", "b", "c", "d"}
    assert len({tuple(data.split_episodes(len(tasks), 0.2, seed, tasks)[1]) for seed in range(20)}) > 1


def test_the_held_out_quota_is_shared_in_proportion_to_each_task():
    tasks = ["a"] * 10 + ["b"] * 5 + ["c"] * 5  # 0.2 of 20 is 4: two of a's, one of b's and c's
    train, heldout = data.split_episodes(len(tasks), 0.2, 1, tasks)
    assert _heldout_per_task(tasks, heldout) == {"a": 2, "b": 1, "c": 1}


def test_many_small_tasks_hold_out_one_each_even_above_the_fraction():
    tasks = ["a", "b", "c", "d"] * 2  # 0.2 of 8 is 2, but four tasks each need one held out to be evaluated
    train, heldout = data.split_episodes(len(tasks), 0.2, 0, tasks)
    assert _heldout_per_task(tasks, heldout) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert _heldout_per_task(tasks, train) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_partitions_are_disjoint_and_cover_everything():
    parts = [data.partition_episodes(range(12), i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == list(range(12))
    with pytest.raises(DatasetError, match="partition-id 3"):
        data.partition_episodes(range(12), 3, 3)


def test_missing_path_and_non_dataset_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        data.resolve_dataset_uri(str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="meta/info.json"):
        data.resolve_dataset_uri(str(tmp_path))
    with pytest.raises(DatasetError, match="hf:<owner>/<name>"):
        data.resolve_dataset_uri("hf:not-a-repo")
    with pytest.raises(DatasetError, match="embedded datasets are"):
        data.resolve_dataset_uri("embedded:nothing")


@pytest.mark.parametrize(
    ("drop", "action_dim", "fps", "message"),
    [
        (("observation.state",), 6, 30, "no 'observation.state' feature"),
        (("observation.images.wrist",), 6, 30, "no camera 'observation.images.wrist'"),
        ((), 7, 30, r"'action' has shape \(7,\), the policy expects \(6,\)"),
        ((), 6, 15, "recorded at 15 fps, the policy expects 30 fps"),
    ],
)
def test_schema_mismatch_names_the_key(tmp_path, drop, action_dim, fps, message):
    root = write_dataset_with(tmp_path / "ds", drop=drop, action_dim=action_dim, fps=fps)
    meta = data.open_metadata(data.resolve_dataset_uri(str(root)))
    with pytest.raises(DatasetError, match=message):
        data.validate_schema(meta, SCHEMA, str(root))


def test_embedded_operator_dataset_fits_the_tiny_policy(operator0):
    assert operator0.meta.robot_type == "so100_follower"
    assert operator0.meta.fps == 30
    sample = operator0.train[0]
    assert sample["action"].shape == (10, 6)  # one action chunk of the tiny policy
    assert sample["observation.images.front"].shape == (3, 48, 64)
    assert operator0.train.episodes and operator0.heldout.episodes
    assert not set(operator0.train.episodes) & set(operator0.heldout.episodes)


def test_camera_map_lets_a_recording_with_other_camera_names_fit(tmp_path, tiny_config):
    from app.learning import model
    root = write_dataset_with(tmp_path / "ds", rename={"front": "top"})
    meta = data.open_metadata(data.resolve_dataset_uri(str(root)))
    with pytest.raises(DatasetError, match=r"no camera 'observation.images.front' \(it has \['top', 'wrist'\]\).*top=front"):
        data.validate_schema(meta, SCHEMA, str(root))
    camera_map = {"observation.images.top": "observation.images.front"}
    data.validate_schema(meta, SCHEMA, str(root), camera_map)

    node = data.load_node_data(str(root), model.policy_schema(tiny_config, 30),
                               lambda m: model.delta_timestamps(tiny_config, m), 0.5, 0, camera_map=camera_map)
    sample = node.train[0]
    assert "observation.images.front" in sample and "observation.images.top" not in sample
    assert len(node.train) == 5 and node.train.episodes == node.train.inner.episodes


def test_servers_learn_a_local_dataset_by_its_directory_name_only():
    assert data.public_name("/home/alice/robot/so100_kitchen") == "local:so100_kitchen"
    assert data.public_name("hf:lerobot/svla_so100_pickplace") == "hf:lerobot/svla_so100_pickplace"
    assert data.public_name("embedded:operator-1") == "embedded:operator-1"


def test_a_public_dataset_name_stays_as_it_is():
    """The server names whatever a node reports through public_name: a name made public already must survive."""
    for name in ("local:so100_kitchen", "hf:lerobot/svla_so100_pickplace", "embedded:operator-1", ""):
        assert data.public_name(name) == name


FAMILIES = [0, 1, 2, 3, 0, 0, 1, 2]  # 8 episodes: family 0 three times, 1 and 2 twice, 3 once


@pytest.fixture(scope="module")
def four_tasks(tmp_path_factory):
    """A small multi-task dataset written by the embedded writer (PNG frames: quicker than video)."""
    from app.learning.embedded.datasets import write_dataset

    root = tmp_path_factory.mktemp("four_tasks") / "ds"
    return write_dataset(root, "test/four_tasks", FAMILIES, num_episodes=len(FAMILIES), frames_per_episode=4,
                         seed=0, use_videos=False)


def _load(root, tiny_config, **kwargs):
    from app.learning import model
    return data.load_node_data(str(root), model.policy_schema(tiny_config, 30),
                               lambda m: model.delta_timestamps(tiny_config, m), 0.2, 0, **kwargs)


def test_a_nodes_held_out_episodes_cover_each_task_it_has_twice(four_tasks, tiny_config):
    node = _load(four_tasks, tiny_config)
    tasks = data.episode_tasks(node.meta, range(len(FAMILIES)))
    assert len(set(tasks)) == 4 and tasks[0] == tasks[4] == tasks[5]
    assert {tasks[e] for e in node.heldout_episodes} == {tasks[0], tasks[1], tasks[2]}  # family 3 has one episode
    assert sorted(node.train.episodes) == node.train_episodes
    assert sorted(node.heldout.episodes) == node.heldout_episodes
    assert _load(four_tasks, tiny_config).heldout_episodes == node.heldout_episodes


def test_an_evaluation_only_view_holds_out_every_episode(four_tasks, tiny_config):
    server = _load(four_tasks, tiny_config, evaluation_only=True)
    assert server.train is None and server.train_episodes == []
    assert server.heldout_episodes == list(range(len(FAMILIES)))
    assert len(server.heldout) == server.meta.total_frames == 4 * len(FAMILIES)
    assert len(set(data.episode_tasks(server.meta, server.heldout_episodes))) == 4


def test_frame_stats_read_only_the_frames_of_the_episodes_loaded(four_tasks, tiny_config):
    node = _load(four_tasks, tiny_config)
    stats = data.frame_stats(node.train)
    actions = np.stack([node.train.hf_dataset[i]["action"].numpy() for i in range(len(node.train))])
    np.testing.assert_allclose(stats["action"]["mean"], actions.astype(np.float64).mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["action"]["max"], actions.max(0))
    assert stats["observation.state"]["count"].tolist() == [len(node.train)]
    whole = data.frame_stats(data.open_dataset(node.ref, None, None))
    for field in ("mean", "std", "min", "max", "count"):  # all frames: LeRobot's own stats of the dataset
        np.testing.assert_allclose(whole["action"][field], node.meta.stats["action"][field], rtol=1e-5, atol=1e-6)


def test_the_embedded_server_eval_set_is_evaluated_whole_and_covers_every_task_family(tiny_config):
    from app.learning.embedded import FRAMES_PER_EPISODE, SERVER_EVAL_EPISODES
    from app.learning.embedded.datasets import TASK_FAMILIES

    server = _load("embedded:server-eval", tiny_config, evaluation_only=True)
    assert server.heldout_episodes == list(range(SERVER_EVAL_EPISODES)) == list(range(6))
    assert len(server.heldout) == SERVER_EVAL_EPISODES * FRAMES_PER_EPISODE == 240
    tasks = set(data.episode_tasks(server.meta, server.heldout_episodes))
    assert tasks == {(family.instruction,) for family in TASK_FAMILIES}
