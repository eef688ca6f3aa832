import numpy as np
import pytest

from app.config import NodeConfig, RunConfig
from app.node import federated_stats, flatten_stats, node_dataset_uri, unflatten_stats


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
