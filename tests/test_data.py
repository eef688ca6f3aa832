import pytest

from app import data
from app.data import PolicySchema
from app.errors import DatasetError
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
    from app import model

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
