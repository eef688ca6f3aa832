"""A tiny SmolVLM backbone (config, tokenizer, processor) written to a local directory.

SmolVLA names its vision-language backbone by `vlm_model_name` and always loads the config and the processor
from it. Offline there is no Hub, so the embedded default writes a miniature SmolVLM with the same structure as
`HuggingFaceTB/SmolVLM2-500M-Video-Instruct` (llama text model, SigLIP-style vision model, pixel shuffle) but a few
thousand times smaller. Its weights are random; only the directory layout and the special tokens matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The `<row_R_col_C>` tokens exist for image splitting; we never split, but SmolVLM's processor expects them.
_GRID_TOKENS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
_SPECIAL_TOKENS = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
# Task instructions of the embedded datasets are built from these words; anything else maps to <unk>.
_WORDS = (
    "pick place the red green blue yellow cube block cup bowl box in on into onto from to left right up down "
    "stack sort push pull open close drawer gripper arm move grasp lift put and a of with robot tray bin"
).split()

@dataclass(frozen=True)
class BackboneDims:
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    vocab_size: int  # embedding rows; the tokenizer itself only knows a few hundred words
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    scale_factor: int


TINY = BackboneDims(64, 128, 4, 4, 2, 16, 0, 32, 64, 2, 2, 64, 16, 2)
# HuggingFaceTB/SmolVLM2-500M-Video-Instruct, the backbone of lerobot/smolvla_base (random weights here): used by
# the benchmarks to measure what a real federation moves, without a download.
SMOLVLM2_500M = BackboneDims(960, 2560, 32, 15, 5, 64, 49280, 768, 3072, 12, 12, 512, 16, 4)
TEXT_LAYERS = TINY.text_layers
IMAGE_SIZE = TINY.image_size


def write_tiny_backbone(directory: Path, dims: BackboneDims = TINY) -> Path:
    """Write a SmolVLM config, tokenizer and processor (tiny by default) into `directory` and return it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMProcessor
    from transformers.models.smolvlm import SmolVLMImageProcessor, SmolVLMVideoProcessor

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<pad>", "<|im_start|>", *_SPECIAL_TOKENS.values(), *_GRID_TOKENS]
    vocab = {token: i for i, token in enumerate([*specials, *_WORDS, "\n", ".", ",", ":"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=r"(\s+|[.,:])", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        additional_special_tokens=_GRID_TOKENS,
        extra_special_tokens=_SPECIAL_TOKENS,
    )
    config = SmolVLMConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": max(len(vocab), dims.vocab_size),
            "hidden_size": dims.text_hidden,
            "intermediate_size": dims.text_intermediate,
            "num_hidden_layers": dims.text_layers,
            "num_attention_heads": dims.text_heads,
            "num_key_value_heads": dims.text_kv_heads,
            "head_dim": dims.head_dim,
            "max_position_embeddings": 512,
            "pad_token_id": vocab["<pad>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": dims.vision_hidden,
            "intermediate_size": dims.vision_intermediate,
            "num_hidden_layers": dims.vision_layers,
            "num_attention_heads": dims.vision_heads,
            "image_size": dims.image_size,
            "patch_size": dims.patch_size,
        },
        scale_factor=dims.scale_factor,
        image_token_id=vocab["<image>"],
        vocab_size=max(len(vocab), dims.vocab_size),
    )
    image_processor = SmolVLMImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": dims.image_size},
        max_image_size={"longest_edge": dims.image_size},
    )
    patches = (dims.image_size // dims.patch_size) ** 2
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=patches // dims.scale_factor**2,
    )
    config.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
