import pytest
import torch

from app.learning import model
from app.common.errors import ModelError


def test_tiny_policy_is_lerobot_smolvla_with_a_frozen_backbone(tiny_policy):
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    assert isinstance(tiny_policy, SmolVLAPolicy)
    trainable = model.trainable_state(tiny_policy)
    total = sum(p.numel() for p in tiny_policy.parameters())
    assert 0 < sum(t.numel() for t in trainable.values()) < total
    assert all("lm_expert" in k or "action" in k or "state_proj" in k for k in trainable)


def test_schema_comes_from_the_policy_config(tiny_config):
    schema = model.policy_schema(tiny_config, 30)
    assert (schema.state_dim, schema.action_dim) == (6, 6)
    assert schema.cameras == ("observation.images.front", "observation.images.wrist")


def test_trainable_state_round_trips_and_rejects_foreign_arrays(tiny_config):
    a = model.build_policy("embedded:tiny", tiny_config)
    b = model.build_policy("embedded:tiny", tiny_config)
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.add_(1.0)
    model.load_trainable_state(b, model.trainable_state(a))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    with pytest.raises(ModelError, match="do not match"):
        model.load_trainable_state(b, {"not.a.param": torch.zeros(1)})


def test_fingerprint_tracks_frozen_weights_only(tiny_config):
    a = model.build_policy("embedded:tiny", tiny_config)
    b = model.build_policy("embedded:tiny", tiny_config)
    assert model.frozen_fingerprint(a) == model.frozen_fingerprint(b)
    with torch.no_grad():
        next(p for p in b.parameters() if p.requires_grad).add_(1.0)
    assert model.frozen_fingerprint(a) == model.frozen_fingerprint(b)
    with torch.no_grad():
        next(p for p in b.parameters() if not p.requires_grad).add_(1.0)
    assert model.frozen_fingerprint(a) != model.frozen_fingerprint(b)


def test_bad_model_references(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        model.resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="neither an existing directory nor a Hub id"):
        model.resolve_model("./missing/dir/x")
    with pytest.raises(ModelError, match="only embedded model"):
        model.resolve_model("embedded:huge")


def test_a_federation_can_use_a_subset_of_the_model_cameras():
    config = model.load_config("embedded:tiny", "cpu", ("observation.images.front",))
    assert model.policy_schema(config, 30).cameras == ("observation.images.front",)
    policy = model.build_policy("embedded:tiny", config)  # weights load whatever the camera count
    assert sum(t.numel() for t in model.trainable_state(policy).values()) > 0
    with pytest.raises(ModelError, match="has no camera 'camera1'; it has \\['front', 'wrist'\\]"):
        model.load_config("embedded:tiny", "cpu", ("observation.images.camera1",))


def test_a_model_is_named_beyond_this_machine_without_its_path(tmp_path):
    checkpoint = tmp_path / "outputs" / "2026-01-01_00-00-00" / "models" / "checkpoint_round_30"
    checkpoint.mkdir(parents=True)
    assert model.public_model_name(str(checkpoint)) == "local:checkpoint_round_30"
    assert model.public_model_name("/home/alice/models/my_base") == "local:my_base"
    assert model.public_model_name("lerobot/smolvla_base") == "lerobot/smolvla_base"
    assert model.public_model_name("embedded:tiny") == "embedded:tiny"
