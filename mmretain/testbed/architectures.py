"""The test-bed models: small configurations of real transformers classes, and their processors.

Each architecture is a function from the tokenizer to an untrained model and the processor
that feeds it; ``train`` fits the model and saves both like a hub checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.llava_onevision.image_processing_llava_onevision import (
    LlavaOnevisionImageProcessor,
)
from transformers.models.llava_onevision.video_processing_llava_onevision import (
    LlavaOnevisionVideoProcessor,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from .draw import CELL
from .suites.image_needle import CELLS
from .suites.motion import FRAME
from .tokenizer import IM_END, IMAGE_PAD, PAD, VIDEO_PAD, VISION_END, VISION_START


@dataclass(frozen=True)
class Size:
    """Widths and depths of one model; ``tiny`` exists for quick smoke runs."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vision_width: int
    vision_layers: int


SIZES = {
    "default": Size(hidden=128, layers=4, heads=4, kv_heads=2, vision_width=128, vision_layers=2),
    "tiny": Size(hidden=32, layers=2, heads=2, kv_heads=1, vision_width=32, vision_layers=1),
}


def _text_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {"eos_token_id": ids(IM_END), "pad_token_id": ids(PAD), "bos_token_id": None}


def _text_config(tokenizer: PreTrainedTokenizerFast, size: Size, rope: dict) -> dict[str, Any]:
    """The language model's config: widths from ``size``, the tokenizer's vocabulary and ids."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": size.hidden,
        "intermediate_size": 4 * size.hidden,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, **rope},
        **_text_ids(tokenizer),
    }


def qwen2vl(tokenizer: PreTrainedTokenizerFast, size: Size) -> tuple[torch.nn.Module, Any]:
    """Qwen2-VL: 14-pixel patches, 2 x 2 merge, two frames per temporal patch, M-RoPE."""
    ids = tokenizer.convert_tokens_to_ids
    head_dim = size.hidden // size.heads
    # M-RoPE splits a head's rotary frequencies between time, height and width (1 : 1.5 : 1.5).
    pairs = head_dim // 2
    section = [pairs // 4, pairs * 3 // 8, pairs - pairs // 4 - pairs * 3 // 8]
    config = Qwen2VLConfig(
        text_config=_text_config(tokenizer, size, {"mrope_section": section}),
        vision_config={
            "depth": size.vision_layers,
            "embed_dim": size.vision_width,
            "hidden_size": size.hidden,
            "num_heads": max(1, size.vision_width // 32),
            "mlp_ratio": 2,
            "patch_size": CELL // 2,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids(IMAGE_PAD),
        video_token_id=ids(VIDEO_PAD),
        vision_start_token_id=ids(VISION_START),
        vision_end_token_id=ids(VISION_END),
        **_text_ids(tokenizer),
    )
    model = Qwen2VLForConditionalGeneration(config)
    pixels = {"shortest_edge": FRAME * FRAME}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size={**pixels, "longest_edge": (CELLS * CELL) ** 2}),
        # Frames are shrunk to the size the model saw, whatever the video's resolution.
        video_processor=Qwen2VLVideoProcessor(
            size={**pixels, "longest_edge": FRAME * FRAME}, cap_pixels_per_frame=False
        ),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


def llava_onevision(tokenizer: PreTrainedTokenizerFast, size: Size) -> tuple[torch.nn.Module, Any]:
    """LLaVA-OneVision: a SigLIP tower on FRAME-pixel tiles of one-cell patches, AnyRes tiling
    for images (one token per cell, a newline token per row), 2 x 2 pooled tokens for frames."""
    ids = tokenizer.convert_tokens_to_ids
    tiles = [[FRAME * k, FRAME * k] for k in (1, 2, 4, 8)]  # 56 to 448 pixels, square
    # Allow every tile of the largest grid (AnyRes would otherwise shrink big images' grids).
    aspect = f"anyres_max_{(tiles[-1][0] // FRAME) ** 2}"
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **_text_config(tokenizer, size, {})},
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": size.vision_width,
            "intermediate_size": 2 * size.vision_width,
            "num_hidden_layers": size.vision_layers,
            "num_attention_heads": max(1, size.vision_width // 32),
            "image_size": FRAME,
            "patch_size": CELL,
            "vision_use_head": False,
        },
        image_token_index=ids(IMAGE_PAD),
        video_token_index=ids(VIDEO_PAD),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=tiles,
        vision_aspect_ratio=aspect,
        **_text_ids(tokenizer),
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    frame = {"height": FRAME, "width": FRAME}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=frame, image_grid_pinpoints=tiles),
        video_processor=LlavaOnevisionVideoProcessor(size=frame),
        tokenizer=tokenizer,
        num_image_tokens=(FRAME // CELL) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=aspect,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


ARCHITECTURES: dict[str, Callable[[PreTrainedTokenizerFast, Size], tuple[torch.nn.Module, Any]]] = {
    "qwen2vl": qwen2vl,
    "llava-onevision": llava_onevision,
}


def build(arch: str, size: str = "default") -> tuple[torch.nn.Module, Any]:
    """An untrained model of ``arch`` and its processor (the torch seed fixes the weights)."""
    from .tokenizer import build_tokenizer

    model, processor = ARCHITECTURES[arch](build_tokenizer(), SIZES[size])
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.generation_config.do_sample = False
    return model, processor
