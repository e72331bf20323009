"""Tiny checkpoints on disk (model + tokenizer + processor), written with save_pretrained, so the
tests load them through the same from_pretrained path a real checkpoint takes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

SPECIAL = [
    "<pad>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<unk>",
]
WORDS = [
    "user",
    "assistant",
    "system",
    "what",
    "colour",
    "is",
    "the",
    "red",
    "green",
    "blue",
    "yellow",
    "a",
    "it",
    "yes",
    "no",
    "shape",
    "circle",
    "square",
    "triangle",
    "video",
    "image",
    "first",
    "second",
    "which",
    "came",
    "?",
    ".",
    ",",
    "and",
    "of",
    "in",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %} {{ c['text'] }} {% endif %}{% endfor %}{% endif %} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL[1:7],
    )


def write_qwen2_vl(directory: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2-VL whose video frames are 56 x 56 (4 tokens per temporal patch)."""
    tokenizer = word_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    text = dict(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=0,
    )
    vision = dict(
        depth=2,
        embed_dim=32,
        hidden_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.save_pretrained(directory)
    pixels = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, **pixels),
        video_processor=Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=56 * 56, **pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(directory)
    return directory


def family_chat_template(image: str, video: str) -> str:
    """The chat template above, with a family's own image and video placeholders."""
    return CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", image).replace(
        "<|vision_start|><|video_pad|><|vision_end|>", video
    )


def write_family(name: str, directory: Path, words: Sequence[str] = ()) -> Path:
    """A conftest family (llava_onevision, qwen2_5_vl, ...) saved with a chat template;
    ``words`` join its vocabulary (Qwen3-VL's frame timestamps, say)."""
    from conftest import FAMILY_FACTORIES

    tiny = FAMILY_FACTORIES[name]()
    if words:
        tiny.processor.tokenizer.add_tokens(list(words))
        # random rows: the default (the mean embedding) would make the new words all alike
        tiny.model.resize_token_embeddings(len(tiny.processor.tokenizer), mean_resizing=False)
    tiny.processor.chat_template = family_chat_template(
        tiny.image_placeholder, tiny.video_placeholder
    )
    eos = tiny.processor.tokenizer.eos_token_id
    tiny.model.generation_config.eos_token_id = eos
    tiny.model.save_pretrained(directory)
    tiny.processor.save_pretrained(directory)
    return directory


def write_testbed(directory: Path, arch: str = "qwen2vl") -> Path:
    """An untrained tiny test-bed model (its word-level tokenizer and processor included)."""
    from mmretain.testbed.architectures import build
    from mmretain.testbed.train import save

    torch.manual_seed(0)
    model, processor = build(arch, "tiny")
    save(model, processor, {"untrained": True}, directory)
    return directory
