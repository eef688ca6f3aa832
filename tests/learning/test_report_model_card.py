from app.common.config import RunConfig
from app.learning.report import RunOutputs


def card(tmp_path, **run_config) -> str:
    outputs = RunOutputs(tmp_path / "outputs" / "2026-01-01_00-00-00")
    run = RunConfig.from_mapping(run_config)
    # As a node without this project's sanitizing (an older version, or a hostile one) might report its dataset.
    node_datasets = {"alice": "/home/alice/robot/so100_kitchen", "bob": "hf:bob/so100_towels"}
    return outputs.model_card(run, 3, node_datasets, {"train-loss": 0.5, "server-eval-loss": 0.7})


def test_the_model_card_names_no_path_of_the_machine_that_wrote_it(tmp_path):
    text = card(tmp_path, **{"model": "/srv/models/my_base", "server-eval-dataset": "/srv/data/eval_episodes",
                             "output-dir": str(tmp_path / "outputs")})
    assert str(tmp_path) not in text and "/srv/" not in text and "/home/alice" not in text
    for public in ("local:my_base", "local:eval_episodes", "alice (local:so100_kitchen)", "bob (hf:bob/so100_towels)",
                   "2026-01-01_00-00-00"):
        assert public in text, public


def test_the_model_card_keeps_hub_ids(tmp_path):
    text = card(tmp_path)
    assert "| base model | lerobot/smolvla_base |" in text
    assert "| server eval dataset | hf:lerobot/svla_so100_pickplace |" in text


def test_the_model_card_tells_the_hub_its_base_model_and_datasets_and_how_it_was_trained(tmp_path):
    import yaml

    text = card(tmp_path, **{"update-encoding": "int8-delta", "hf-repo-id": "me/fed-smolvla"})
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == "lerobot/smolvla_base"
    assert front["datasets"] == ["bob/so100_towels", "lerobot/svla_so100_pickplace"]  # local ones have no Hub id
    assert front["library_name"] == "lerobot" and "federated-learning" in front["tags"]
    for row in ("| rounds | 3 |", "| nodes | 2 |", "| local steps per round | 100 |", "| update encoding | int8-delta |"):
        assert row in text, row
    assert 'checkpoint = "me/fed-smolvla"' in text


def test_a_local_base_model_is_not_claimed_as_a_hub_one(tmp_path):
    import yaml

    front = yaml.safe_load(card(tmp_path, model="embedded:tiny").split("---")[1])
    assert "base_model" not in front
