"""The tiny SmolVLA base checkpoint: LeRobot's SmolVLAPolicy on the tiny backbone, random weights, saved with
`save_pretrained` so it loads through exactly the code path of `lerobot/smolvla_base`."""

from __future__ import annotations

from pathlib import Path

from app.learning.embedded.backbone import IMAGE_SIZE, TEXT_LAYERS
from app.learning.embedded.datasets import CAMERAS, IMAGE_HEIGHT, IMAGE_WIDTH, SO100_JOINTS

CHUNK_SIZE = 10


def write_tiny_base_policy(directory: Path, backbone: Path, seed: int) -> Path:
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    dof = len(SO100_JOINTS)
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(dof,))}
    for camera in CAMERAS:
        inputs[f"observation.images.{camera}"] = PolicyFeature(
            type=FeatureType.VISUAL, shape=(3, IMAGE_HEIGHT, IMAGE_WIDTH)
        )
    config = SmolVLAConfig(
        vlm_model_name=str(backbone),
        load_vlm_weights=False,
        num_vlm_layers=TEXT_LAYERS,
        resize_imgs_with_padding=(IMAGE_SIZE, IMAGE_SIZE),
        chunk_size=CHUNK_SIZE,
        n_action_steps=CHUNK_SIZE,
        max_state_dim=8,
        max_action_dim=8,
        tokenizer_max_length=16,
        input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(dof,))},
        device="cpu",
        push_to_hub=False,
    )
    torch.manual_seed(seed)
    policy = SmolVLAPolicy(config)
    policy.save_pretrained(directory)
    return directory
