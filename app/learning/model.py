"""SmolVLA policies: from a Hub id, a local checkpoint directory or the tiny embedded base; processors;
the trainable arrays that travel in a federation and the fingerprint of the frozen ones that do not.

A model reference is one of
  <owner>/<name>   a policy on the Hugging Face Hub, e.g. lerobot/smolvla_base (the production default);
  <path>           a directory written by `save_pretrained` (config.json + model.safetensors);
  embedded:tiny    the tiny offline SmolVLA base, generated on first use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.learning.data import ACTION_KEY, IMAGE_PREFIX, STATE_KEY, PolicySchema
from app.common.errors import ModelError

if TYPE_CHECKING:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

EMBEDDED_MODEL = "embedded:tiny"
DEFAULT_MODEL = "lerobot/smolvla_base"


def resolve_model(model: str) -> str:
    """A model reference -> what `from_pretrained` takes: a local directory or a Hub id."""
    model = model.strip()
    if model == EMBEDDED_MODEL:
        from app.learning.embedded import ensure_base_model

        return str(ensure_base_model())
    if model.startswith("embedded:"):
        raise ModelError(f"model {model!r}: the only embedded model is {EMBEDDED_MODEL!r}")
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {str(path)!r} has no config.json: point at a save_pretrained directory")
        return str(path)
    from huggingface_hub import try_to_load_from_cache

    from app.learning.hub import hub_id_problem, unreachable_hub

    why = None if _names_a_path(model) else hub_id_problem(model)
    if _names_a_path(model) or why is not None:
        raise ModelError(f"model {model!r} is neither an existing directory nor a Hub id like lerobot/smolvla_base"
                         + (f" ({why})" if why else ""))
    cached = isinstance(try_to_load_from_cache(model, "config.json"), str)
    if problem := unreachable_hub(f"model {model!r}", cached):
        raise ModelError(problem)
    return model


def _names_a_path(model: str) -> bool:
    """Written as a filesystem path (absolute, relative or home), whether or not it exists."""
    return model.startswith(("/", ".", "~"))


def public_model_name(model: str) -> str:
    """How a model reference is named beyond this machine (model cards, the Hub): a Hub id or the embedded model as
    it is, a local checkpoint directory by its directory name only."""
    model = model.strip()
    path = Path(model).expanduser()
    if not model.startswith("embedded:") and (path.exists() or _names_a_path(model)):
        return f"local:{path.resolve().name}"
    return model


def load_config(model: str, device: str = "cpu", cameras: tuple[str, ...] | None = None) -> SmolVLAConfig:
    """The policy's config; `cameras` keeps only those camera inputs (SmolVLA's weights do not depend on how
    many cameras it sees), so a federation of two-camera arms can fine-tune a three-camera base."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    source = resolve_model(model)
    try:
        config = PreTrainedConfig.from_pretrained(source)
    except Exception as exc:
        raise ModelError(f"model {model!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not isinstance(config, SmolVLAConfig):
        raise ModelError(f"model {model!r} is a {config.type!r} policy; this project fine-tunes SmolVLA")
    config.device = device
    if cameras is not None:
        available = sorted(k for k in config.input_features if k.startswith(IMAGE_PREFIX))
        unknown = [c for c in cameras if c not in available]
        if unknown:
            names = [c.removeprefix(IMAGE_PREFIX) for c in available]
            raise ModelError(f"cameras: model {model!r} has no camera {unknown[0].removeprefix(IMAGE_PREFIX)!r}; it has {names}")
        config.input_features = {
            k: v for k, v in config.input_features.items() if not k.startswith(IMAGE_PREFIX) or k in cameras
        }
    return config


def policy_schema(config: SmolVLAConfig, fps: int | None) -> PolicySchema:
    cameras = tuple(sorted(k for k in config.input_features if k.startswith(IMAGE_PREFIX)))
    return PolicySchema(
        state_dim=config.input_features[STATE_KEY].shape[0],
        action_dim=config.output_features[ACTION_KEY].shape[0],
        cameras=cameras,
        fps=fps,
    )


def delta_timestamps(config: SmolVLAConfig, meta: LeRobotDatasetMetadata) -> dict[str, list[float]] | None:
    from lerobot.datasets.factory import resolve_delta_timestamps

    return resolve_delta_timestamps(config, meta)


def build_policy(model: str, config: SmolVLAConfig) -> SmolVLAPolicy:
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    try:
        policy = SmolVLAPolicy.from_pretrained(resolve_model(model), config=config)
    except Exception as exc:
        raise ModelError(f"model {model!r} weights cannot be loaded: {type(exc).__name__}: {exc}") from exc
    return policy.to(config.device)


def build_processors(config: SmolVLAConfig, stats: dict[str, dict[str, Any]]):
    """LeRobot's SmolVLA pre/post-processors (normalize, tokenize, device) for the given dataset stats."""
    from lerobot.policies.factory import make_pre_post_processors

    return make_pre_post_processors(config, dataset_stats=stats)


def trainable_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes: the only ones a federation needs to exchange."""
    return {name: p.detach() for name, p in policy.named_parameters() if p.requires_grad}


def load_trainable_state(policy: torch.nn.Module, arrays: dict[str, torch.Tensor]) -> None:
    import torch

    expected = {name for name, p in policy.named_parameters() if p.requires_grad}
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays))[:3], sorted(set(arrays) - expected)[:3]
        raise ModelError(f"received arrays do not match the policy's trainable parameters (missing {missing}, extra {extra})")
    params = dict(policy.named_parameters())
    with torch.no_grad():
        for name, value in arrays.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A digest of named tensors' values (as float32, so a cast on the way does not change it)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy())  # its buffer, not a copy
    return digest.hexdigest()[:16]


def frozen_fingerprint(policy: torch.nn.Module) -> str:
    """A digest of every frozen parameter and buffer: two parties with equal digests share the same base."""
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    return tensors_digest({name: t for name, t in policy.state_dict().items() if name not in trainable})
