"""Every version-sensitive touch of transformers, in one place.

transformers 5.24 renamed the cache argument of ``forward`` and ``generate`` from
``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40 / 6.0). Nothing else in
mmretain names either: it reads and writes the cache through `cache_in` and `with_cache`.
The private helpers the adapters reuse (M-RoPE positions, LLaVA-NeXT's anyres packing) and the
processor internals they ask (how a video placeholder is replaced) are reached through here too,
so a change of their signature or behaviour is fixed once.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.models.llama.modeling_llama import LlamaModel
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

# The name the installed transformers gives the cache argument of forward and generate.
CACHE_KWARG = (
    "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else ("past_key_values")
)
_CACHE_NAMES = ("cache", "past_key_values")

__all__ = [
    "CACHE_KWARG",
    "cache_in",
    "cache_kwargs",
    "get_anyres_image_grid_shape",
    "image_size_to_num_patches",
    "pack_image_features",
    "rope_index",
    "unpad_image",
    "video_placeholder_as_processed",
    "with_cache",
]


def cache_in(kwargs: dict[str, Any]) -> Any:
    """The cache a call was given, under either name (None when it has none)."""
    for name in _CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def with_cache(kwargs: dict[str, Any], cache: Any) -> dict[str, Any]:
    """``kwargs`` with ``cache`` under the installed name and the other name dropped, so the
    model sees one cache and no deprecation warning."""
    for name in _CACHE_NAMES:
        kwargs.pop(name, None)
    kwargs[CACHE_KWARG] = cache
    return kwargs


def rope_index(model: torch.nn.Module, token_types: torch.Tensor, **grids: Any) -> torch.Tensor:
    """M-RoPE position ids [3, b, n] of a Qwen-VL sequence, by the model's own rule.

    ``token_types`` (0 text, 1 image, 2 video) stand in for the ids; ``grids`` are
    ``image_grid_thw``, ``video_grid_thw`` and, for Qwen2.5-VL, ``second_per_grid_ts``.
    """
    positions, _ = model.model.get_rope_index(token_types, mm_token_type_ids=token_types, **grids)
    return positions


def pack_image_features(model: torch.nn.Module, *args: Any) -> list[torch.Tensor]:
    """LLaVA-NeXT / OneVision's packing of per-view image features (newline tokens included)."""
    packed, _ = model.model.pack_image_features(*args)
    return packed


def video_placeholder_as_processed(processor: Any, text: str) -> str:
    """``text`` with its video placeholder replaced as ``processor`` replaces it, by one bare
    video token.

    The processor's own rule decides what surrounds the video: from transformers 5.25,
    ``Qwen3VLProcessor.get_text_with_replacements`` also drops the chat template's
    ``<|vision_start|>``/``<|vision_end|>`` around the placeholder (each temporal patch brings its
    own pair); 5.23 and 5.24 keep them.
    """
    expanded, _ = processor.get_text_with_replacements(
        [text], videos_replacements=[processor.video_token]
    )
    return expanded[0]


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` under the installed name, to splat into a forward or generate call."""
    return {CACHE_KWARG: cache}
