"""Tiny random-weight models of the real transformers classes, built in code (no download)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

VOCAB = 128
TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
IMAGE_TOKEN = 120
VIDEO_TOKEN = 121
VISION_START = 122


@dataclass
class TinyVLM:
    """A tiny model plus a way to build prompts for it, as a processor would."""

    model: torch.nn.Module
    family: str
    image_tokens: int  # tokens per image
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def text(self, n: int) -> torch.Tensor:
        return torch.randint(3, 100, (n,), generator=self.generator)

    def prompt(self, segments: list[int | str]) -> dict:
        """Inputs for a prompt of text runs (ints: that many random tokens) and "image"/"video"."""
        ids, images, videos = [], [], []
        for segment in segments:
            if isinstance(segment, int):
                ids.append(self.text(segment))
            elif segment == "image":
                ids.append(torch.full((self.image_tokens,), IMAGE_TOKEN))
                images.append(segment)
            elif segment == "video":
                ids.append(torch.full((2 * self.image_tokens,), VIDEO_TOKEN))
                videos.append(segment)
        input_ids = torch.cat(ids)[None]
        inputs = {"input_ids": input_ids}
        g = self.generator
        if self.family == "llava" and images:
            inputs["pixel_values"] = torch.randn(len(images), 3, 28, 28, generator=g)
        if self.family == "qwen2_vl":
            if images:
                inputs["pixel_values"] = torch.randn(16 * len(images), 1176, generator=g)
                inputs["image_grid_thw"] = torch.tensor([[1, 4, 4]] * len(images))
            if videos:
                inputs["pixel_values_videos"] = torch.randn(32 * len(videos), 1176, generator=g)
                inputs["video_grid_thw"] = torch.tensor([[2, 4, 4]] * len(videos))
            types = torch.zeros_like(input_ids)
            types[input_ids == IMAGE_TOKEN] = 1
            types[input_ids == VIDEO_TOKEN] = 2
            inputs["mm_token_type_ids"] = types
        return inputs


def make_llama() -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM(LlamaForCausalLM(LlamaConfig(**TEXT)).eval(), "llama", 0)


def make_qwen2() -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM(Qwen2ForCausalLM(Qwen2Config(**TEXT)).eval(), "qwen2", 0)


def make_llava() -> TinyVLM:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=7,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**TEXT), image_token_id=IMAGE_TOKEN
    )
    return TinyVLM(LlavaForConditionalGeneration(config).eval(), "llava", 16)


def make_qwen2_vl() -> TinyVLM:
    torch.manual_seed(0)
    text = dict(
        TEXT,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
    )
    return TinyVLM(Qwen2VLForConditionalGeneration(config).eval(), "qwen2_vl", 4)


FACTORIES = {
    "llama": make_llama,
    "qwen2": make_qwen2,
    "llava": make_llava,
    "qwen2_vl": make_qwen2_vl,
}


@pytest.fixture(scope="session", params=sorted(FACTORIES))
def any_model(request) -> TinyVLM:
    return FACTORIES[request.param]()


@pytest.fixture(scope="session", params=["llava", "qwen2_vl"])
def vlm(request) -> TinyVLM:
    return FACTORIES[request.param]()


@pytest.fixture(scope="session")
def llama() -> TinyVLM:
    return make_llama()
