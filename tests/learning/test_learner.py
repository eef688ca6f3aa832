import numpy as np
import pytest

from app.common.config import NodeConfig, RunConfig
from app.learning.learner import federated_stats, flatten_stats, node_dataset_uri, unflatten_stats


def _stats(values: np.ndarray) -> dict:
    return {
        key: {"mean": values.mean(0), "std": values.std(0), "min": values.min(0), "max": values.max(0),
              "count": np.array([len(values)])}
        for key in ("observation.state", "action")
    }


def test_stats_survive_flattening():
    stats = _stats(np.arange(12, dtype=float).reshape(4, 3))
    again = unflatten_stats(flatten_stats(stats))
    for key in stats:
        for field in stats[key]:
            np.testing.assert_allclose(again[key][field], stats[key][field])


def test_federated_stats_equal_the_stats_of_the_pooled_data():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (50, 6)), rng.normal(5, 3, (150, 6))
    merged = unflatten_stats(federated_stats([flatten_stats(_stats(a)), flatten_stats(_stats(b))]))
    pooled = np.concatenate([a, b])
    np.testing.assert_allclose(merged["action"]["mean"], pooled.mean(0), rtol=1e-9)
    np.testing.assert_allclose(merged["action"]["std"], pooled.std(0), rtol=1e-6)
    np.testing.assert_allclose(merged["action"]["max"], pooled.max(0))


@pytest.mark.parametrize(
    ("run", "node", "expected"),
    [
        ({}, {"dataset-uri": "/data/x"}, ("/data/x", None)),
        ({}, {"partition-id": 1, "num-partitions": 2}, ("embedded:operator-1", None)),
        ({"partition-dataset": "hf:me/d"}, {"partition-id": 1, "num-partitions": 3}, ("hf:me/d", (1, 3))),
    ],
)
def test_where_a_node_gets_its_data(run, node, expected):
    assert node_dataset_uri(RunConfig.from_mapping(run), NodeConfig.from_mapping(node)) == expected


FAMILIES = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]  # 12 episodes, four task families, each three times


@pytest.fixture(scope="module")
def shared_dataset(tmp_path_factory):
    """A small multi-task dataset to partition among simulated nodes (PNG frames: quicker than video)."""
    from app.learning.embedded.datasets import write_dataset

    root = tmp_path_factory.mktemp("shared") / "ds"
    return write_dataset(root, "test/shared", FAMILIES, num_episodes=len(FAMILIES), frames_per_episode=4, seed=1,
                         use_videos=False)


def _run(**overrides) -> RunConfig:
    return RunConfig.from_mapping({"model": "embedded:tiny", "device": "cpu", "seed": 0, **overrides})


def _parquet_frames(root, episodes: list[int]) -> dict[str, np.ndarray]:
    """The dataset's frames of `episodes`, read with pandas: an account independent of LeRobot's loader."""
    import pandas as pd

    frames = pd.concat(pd.read_parquet(p) for p in sorted((root / "data").glob("*/*.parquet")))
    frames = frames[frames["episode_index"].isin(episodes)]
    return {key: np.stack(frames[key].to_numpy()).astype(np.float64) for key in ("observation.state", "action")}


def test_a_partition_reports_the_stats_of_its_own_training_frames(shared_dataset):
    from app.learning.learner import Learner

    learner = Learner(_run(**{"partition-dataset": str(shared_dataset)}), str(shared_dataset), partition=(1, 2))
    assert set(learner.data.train_episodes + learner.data.heldout_episodes) == set(range(1, len(FAMILIES), 2))
    stats = unflatten_stats(learner.local_stats())
    frames = _parquet_frames(shared_dataset, learner.data.train_episodes)
    for key, values in frames.items():
        np.testing.assert_allclose(stats[key]["mean"], values.mean(0), rtol=1e-9)
        np.testing.assert_allclose(stats[key]["std"], values.std(0), rtol=1e-6)
        np.testing.assert_allclose(stats[key]["min"], values.min(0))
        np.testing.assert_allclose(stats[key]["max"], values.max(0))
        assert stats[key]["count"].tolist() == [len(values)]
    whole = unflatten_stats(flatten_stats(learner.data.meta.stats))
    assert whole["action"]["count"].tolist() == [4 * len(FAMILIES)]
    assert not np.allclose(stats["action"]["mean"], whole["action"]["mean"])


def test_a_node_with_its_own_dataset_reports_lerobots_stats_of_it(shared_dataset):
    from app.learning.learner import Learner

    learner = Learner(_run(), str(shared_dataset))
    assert learner.local_stats() == flatten_stats(learner.data.meta.stats)


@pytest.mark.parametrize("keep", [False, True])
def test_adamw_state_survives_rounds_only_when_the_run_keeps_it(shared_dataset, keep):
    from app.learning import model
    from app.learning.learner import Learner

    learner = Learner(_run(**{"local-steps": 3, "keep-optimizer-state": keep}), str(shared_dataset))
    start = {k: v.clone() for k, v in model.trainable_state(learner.policy).items()}
    learner.train_round(start, learner.local_stats(), 1e-3, 1)
    if not keep:
        assert learner._optimizer_state is None
        return
    assert {int(s["step"]) for s in learner._optimizer_state.values()} == {3}
    learner.train_round(start, learner.local_stats(), 1e-3, 2)
    assert {int(s["step"]) for s in learner._optimizer_state.values()} == {6}  # one run of moments, not two


def test_a_kept_adamw_state_moves_weights_with_this_rounds_learning_rate(shared_dataset):
    import torch

    from app.learning import model
    from app.learning.learner import Learner

    learner = Learner(_run(**{"local-steps": 3, "keep-optimizer-state": True, "proximal-mu": 0.0}), str(shared_dataset))
    start = {k: v.clone() for k, v in model.trainable_state(learner.policy).items()}
    learner.train_round(start, learner.local_stats(), 1e-3, 1)
    result = learner.train_round(start, learner.local_stats(), 0.0, 2)  # lr 0: not the saved state's 1e-3
    for name, values in result.arrays.items():
        torch.testing.assert_close(values, start[name], atol=1e-6, rtol=0)
