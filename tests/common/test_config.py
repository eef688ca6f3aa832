import pytest

from app.common.config import EMBEDDED_OVERRIDES, NodeConfig, RunConfig
from app.common.errors import ConfigError


def test_defaults_are_production_hub_ids():
    config = RunConfig.from_mapping({})
    assert config.model == "lerobot/smolvla_base"
    assert config.server_eval_dataset.startswith("hf:lerobot/")
    assert config.checkpoint_interval == 10
    assert config.proximal_mu == 0.01
    assert config.hf_private is True, "a Hub push is private unless the run says otherwise"


def test_embedded_overrides_are_valid():
    config = RunConfig.from_mapping(EMBEDDED_OVERRIDES)
    assert config.model == "embedded:tiny"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num-server-rounds", 0),
        ("num-server-rounds", "three"),
        ("local-steps", 2.5),
        ("lr", -1),
        ("lr", "fast"),
        ("proximal-mu", -0.1),
        ("fraction-train", 0.0),
        ("fraction-train", 1.5),
        ("checkpoint-interval", 0),
        ("use-wandb", "maybe"),
        ("hf-private", "yes"),
        ("hf-repo-id", "no-slash"),
        ("device", "tpu"),
        ("batch-size", True),
        ("aggregation", "fedavgg"),
        ("trim-beta", 0.5),
        ("num-malicious-nodes", -1),
        ("max-update-mb", -1),
    ],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_mapping({key: value})


def test_an_unknown_aggregation_names_the_choices():
    with pytest.raises(ConfigError, match="aggregation must be one of fedprox, fedtrimmedavg, fedmedian, krum, "
                                          "multikrum, bulyan, got 'mean'"):
        RunConfig.from_mapping({"aggregation": "mean"})


@pytest.mark.parametrize(
    ("aggregation", "settings", "needed"),
    [
        ("fedprox", {}, 1),
        ("fedmedian", {}, 3),
        ("fedtrimmedavg", {"trim-beta": 0.25}, 4),  # Flower cuts int(0.25 * 4) = 1 update from each end
        ("fedtrimmedavg", {}, 5),  # int(0.2 * 4) = 0: four updates are not enough with Flower's default beta
        ("krum", {}, 5),
        ("multikrum", {"num-malicious-nodes": 2}, 7),
        ("bulyan", {}, 7),
        ("bulyan", {"num-malicious-nodes": 0}, 3),
    ],
)
def test_robust_aggregations_need_enough_nodes_to_outvote_the_malicious_ones(aggregation, settings, needed):
    enough = {"aggregation": aggregation, **settings, "min-train-nodes": needed, "min-available-nodes": needed}
    assert RunConfig.from_mapping(enough).updates_needed == needed
    if needed > 1:
        with pytest.raises(ConfigError, match=f"aggregation={aggregation} withstands .* at least {needed} updates a "
                                              f"round .* but min-train-nodes={needed - 1}: raise min-train-nodes"):
            RunConfig.from_mapping({**enough, "min-train-nodes": needed - 1})


def test_a_trimmed_mean_that_trims_nothing_is_refused():
    with pytest.raises(ConfigError, match="trim-beta=0 trims nothing"):
        RunConfig.from_mapping({"aggregation": "fedtrimmedavg", "trim-beta": 0.0})


def test_unknown_key_is_rejected_with_the_known_ones():
    with pytest.raises(ConfigError, match="num-server-round'.*known keys"):
        RunConfig.from_mapping({"num-server-round": 3})


def test_steps_from_epochs_or_steps():
    assert RunConfig.from_mapping({"local-steps": 7}).steps_for(100) == 7
    assert RunConfig.from_mapping({"local-epochs": 2, "batch-size": 8}).steps_for(100) == 26


def test_round_lr_decays_from_lr_to_min_ratio():
    config = RunConfig.from_mapping({"lr": 1e-3, "lr-min-ratio": 0.1, "num-server-rounds": 5})
    lrs = [config.round_lr(r) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert lrs == sorted(lrs, reverse=True)


def test_node_config_needs_a_dataset_or_a_partition():
    with pytest.raises(ConfigError, match="dataset-uri"):
        NodeConfig.from_mapping({})
    assert NodeConfig.from_mapping({"dataset-uri": "/data/x"}).label() == "x"
    node = NodeConfig.from_mapping({"partition-id": 1, "num-partitions": 2})
    assert (node.partition_id, node.num_partitions, node.label()) == (1, 2, "partition_1")
    with pytest.raises(ConfigError, match="partition-id 2"):
        NodeConfig.from_mapping({"partition-id": 2, "num-partitions": 2})


def test_camera_map_parsing():
    from app.common.config import parse_camera_map, parse_cameras

    assert parse_camera_map("top=camera1, wrist=camera2") == {
        "observation.images.top": "observation.images.camera1",
        "observation.images.wrist": "observation.images.camera2",
    }
    assert parse_camera_map("") == {}
    assert parse_cameras("camera1,camera2") == ("observation.images.camera1", "observation.images.camera2")
    assert parse_cameras("") is None
    # auto: smolvla_base's camera1/camera2 fed by SO-100's top/wrist; any other model as it is
    assert parse_cameras("auto", "lerobot/smolvla_base") == ("observation.images.camera1", "observation.images.camera2")
    assert parse_camera_map("auto", "lerobot/smolvla_base")["observation.images.top"] == "observation.images.camera1"
    assert parse_cameras("auto", "embedded:tiny") is None
    assert parse_camera_map("auto", "embedded:tiny") == {}
    with pytest.raises(ConfigError, match="camera-map must be 'dataset_camera=policy_camera' pairs"):
        RunConfig.from_mapping({"camera-map": "top-camera1"})
    with pytest.raises(ConfigError, match="camera-map"):
        NodeConfig.from_mapping({"dataset-uri": "/x", "camera-map": "top"})
    assert NodeConfig.from_mapping({"dataset-uri": "/x"}).camera_map is None


def test_server_optimizer_step_sizes_default_to_flowers():
    assert RunConfig.from_mapping({}).server_optimizer == "none"
    assert RunConfig.from_mapping({"server-optimizer": "fedavgm"}).server_step == 1.0
    assert RunConfig.from_mapping({"server-optimizer": "FedAdam"}).server_step == 0.1
    assert RunConfig.from_mapping({"server-optimizer": "fedyogi", "server-lr": 0.003}).server_step == 0.003
    with pytest.raises(ConfigError, match="server-optimizer must be one of none, fedavgm, fedadam"):
        RunConfig.from_mapping({"server-optimizer": "sgd"})


def test_every_run_config_key_has_one_default_in_the_dataclass_pyproject_and_readme():
    import re
    import tomllib
    from dataclasses import fields
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig()
    keys = [f.name.replace("_", "-") for f in fields(RunConfig)]
    assert list(declared) == keys, "pyproject.toml's [tool.flwr.app.config] lists the dataclass's keys, in order"
    assert RunConfig.from_mapping(declared) == defaults, "pyproject.toml's values are the dataclass's defaults"
    documented = re.findall(r"^\| `([a-z0-9-]+)` \| ", (repo / "README.md").read_text().split("## Run configuration")[1]
                            .split("\n## ")[0], flags=re.MULTILINE)
    assert documented == keys, "the README's run-config table lists every key, in the dataclass's order"
