import pytest
import torch

from app.learning import model
from app.learning.evaluate import evaluate
from app.common.config import lr_factor
from app.learning.train import TrainSettings, proximal_term, train


def test_lr_schedule_warms_up_then_decays_to_min_ratio():
    factors = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert factors[10:] == sorted(factors[10:], reverse=True)


def test_proximal_term_is_squared_distance_to_reference():
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    reference = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.0]])}
    assert proximal_term(params, reference).item() == pytest.approx(1 + 4 + 4)


def _train_tiny(tiny_config, operator0, steps, **overrides):
    policy = model.build_policy("embedded:tiny", tiny_config)
    pre, _ = model.build_processors(tiny_config, operator0.meta.stats)
    settings = TrainSettings(**{"steps": steps, "batch_size": 8, "lr": 1e-3, "warmup_steps": 10, "seed": 0, **overrides})
    before = evaluate(policy, pre, operator0.heldout).loss
    result = train(policy, pre, operator0.train, settings, reference=model.trainable_state(policy))
    return policy, before, result, evaluate(policy, pre, operator0.heldout).loss


def test_two_hundred_steps_halve_the_heldout_loss(tiny_config, operator0):
    _, before, result, after = _train_tiny(tiny_config, operator0, 200)
    assert result.steps == 200 and result.samples == 1600
    assert after <= 0.5 * before, (before, after)


def test_same_seed_same_loss_curve(tiny_config, operator0):
    _, _, first, _ = _train_tiny(tiny_config, operator0, 15)
    _, _, second, _ = _train_tiny(tiny_config, operator0, 15)
    assert first.losses == pytest.approx(second.losses, rel=1e-5, abs=1e-6)


def test_proximal_term_keeps_weights_closer_to_the_reference(tiny_config, operator0):
    start = {k: v.clone() for k, v in model.trainable_state(model.build_policy("embedded:tiny", tiny_config)).items()}

    def drift(mu):
        policy, _, _, _ = _train_tiny(tiny_config, operator0, 30, proximal_mu=mu)
        return proximal_term(model.trainable_state(policy), start).item()

    assert drift(50.0) < drift(0.0)


def test_evaluation_is_reproducible_and_leaves_the_rng_alone(tiny_policy, tiny_config, operator0):
    pre, _ = model.build_processors(tiny_config, operator0.meta.stats)
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    first = evaluate(tiny_policy, pre, operator0.heldout)
    assert torch.rand(1) == expected_next
    assert evaluate(tiny_policy, pre, operator0.heldout) == first


def test_training_that_diverges_stops_with_a_message_naming_the_learning_rate(tiny_config, operator0):
    with pytest.raises(FloatingPointError, match=r"training diverged: .* with lr=1e\+12; lower lr"):
        _train_tiny(tiny_config, operator0, steps=30, lr=1e12, warmup_steps=0, grad_clip_norm=1e30)
