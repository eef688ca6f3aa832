"""A tiny SmolVLM backbone (config, tokenizer, processor) written to a local directory.

SmolVLA names its vision-language backbone by `vlm_model_name` and always loads the config and the processor
from it. Offline there is no Hub, so the embedded default writes a miniature SmolVLM with the same structure as
`HuggingFaceTB/SmolVLM2-500M-Video-Instruct` (llama text model, SigLIP-style vision model, pixel shuffle) but a few
thousand times smaller. Its weights are random; only the directory layout and the special tokens matter.
"""

from __future__ import annotations

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

TEXT_HIDDEN = 64
TEXT_LAYERS = 4
IMAGE_SIZE = 64


def write_tiny_backbone(directory: Path) -> Path:
    """Write a tiny SmolVLM config, tokenizer and processor into `directory` and return it."""
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
            "vocab_size": len(vocab),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "pad_token_id": vocab["<pad>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
        },
        scale_factor=2,
        image_token_id=vocab["<image>"],
        vocab_size=len(vocab),
    )
    image_processor = SmolVLMImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=4,
    )
    config.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
