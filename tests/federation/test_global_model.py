"""app.federation.global_model: `resume-from` loads a checkpoint into the server's global model."""

import pytest
import torch

from app.common.config import RunConfig
from app.common.errors import ConfigError
from app.federation.global_model import GlobalModel
from app.learning import checkpoint, model
from app.learning.learner import flatten_stats
from tests.learning.test_learner import FAMILIES, _run, shared_dataset  # noqa: F401 (a fixture)


def _saved(tmp_path, policy, config, stats, round_, shift_frozen=False):
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad or shift_frozen:
                p.add_(0.25)
    pre, post = model.build_processors(config, stats)
    return checkpoint.save_checkpoint(tmp_path / f"checkpoint_round_{round_}", policy, pre, post, {"round": round_}, "#")


def test_resume_loads_the_checkpoint_weights_and_returns_its_round(tmp_path, tiny_config, operator0):
    trained = model.build_policy("embedded:tiny", tiny_config)
    directory = _saved(tmp_path, trained, tiny_config, operator0.meta.stats, 4)
    policy = model.build_policy("embedded:tiny", tiny_config)

    def resume(**settings) -> int:
        return GlobalModel(RunConfig.from_mapping(settings), policy, tiny_config).resume_from_checkpoint()

    assert resume(**{"model": "embedded:tiny", "num-server-rounds": 6, "resume-from": str(directory)}) == 4
    for name, value in model.trainable_state(trained).items():
        assert torch.equal(model.trainable_state(policy)[name], value)
    with pytest.raises(ConfigError, match="at round 4; set num-server-rounds above it"):
        resume(**{"num-server-rounds": 4, "resume-from": str(directory)})
    assert resume() == 0


def test_resume_from_a_corrupt_checkpoint_continues_from_the_previous_one(tmp_path, tiny_config, operator0):
    policy = model.build_policy("embedded:tiny", tiny_config)
    _saved(tmp_path, policy, tiny_config, operator0.meta.stats, 2)
    latest = _saved(tmp_path, policy, tiny_config, operator0.meta.stats, 4)
    with open(latest / "model.safetensors", "r+b") as f:  # one byte flipped on disk
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    run = RunConfig.from_mapping({"num-server-rounds": 6, "resume-from": str(latest)})
    assert GlobalModel(run, model.build_policy("embedded:tiny", tiny_config), tiny_config).resume_from_checkpoint() == 2


def test_resume_refuses_a_checkpoint_of_another_base(tmp_path, tiny_config, operator0):
    other = _saved(tmp_path, model.build_policy("embedded:tiny", tiny_config), tiny_config, operator0.meta.stats, 2,
                   shift_frozen=True)
    run = RunConfig.from_mapping({"num-server-rounds": 5, "resume-from": str(other)})
    server = GlobalModel(run, model.build_policy("embedded:tiny", tiny_config), tiny_config)
    with pytest.raises(ConfigError, match="another base model"):
        server.resume_from_checkpoint()




def test_the_server_evaluates_on_every_episode_of_its_dataset(shared_dataset):
    server = GlobalModel.build(_run(**{"server-eval-dataset": str(shared_dataset)}))
    assert server.data.train is None
    assert server.data.heldout_episodes == list(range(len(FAMILIES)))
    assert len(server.data.heldout) == 4 * len(FAMILIES)
    assert server.evaluate(server.arrays(), flatten_stats(server.data.meta.stats))["num-examples"] == 48
