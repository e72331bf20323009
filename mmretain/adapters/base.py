"""The interface every model family implements, and the shared machinery behind it."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..tags import Modality, TokenTags
from ..vision_saliency import VisionSaliencyTap


class Adapter:
    """Knows one model family: where its decoder and attention layers are, and what its tokens are.

    Subclasses set ``family`` and ``model_types`` (the ``config.model_type`` values they accept)
    and override ``tags`` when prompts carry media.
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    multimodal: ClassVar[bool] = False

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in cls.model_types

    # -- structure -----------------------------------------------------------------------------
    @property
    def text_config(self):
        config = self.model.config
        return config.get_text_config() if self.multimodal else config

    @property
    def decoder(self) -> nn.Module:
        """The module that runs the decoder layers over embeddings, with the cache."""
        inner = self.model.model
        return inner.language_model if self.multimodal else inner

    @property
    def attention_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.decoder.layers]

    @property
    def num_layers(self) -> int:
        return len(self.decoder.layers)

    @property
    def num_kv_heads(self) -> int:
        config = self.text_config
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads

    # -- attention implementation of the text model only ---------------------------------------
    def attention_implementation(self) -> str:
        return self.text_config._attn_implementation

    def set_attention_implementation(self, name: str) -> None:
        # Only the text model: the vision tower keeps its own (usually SDPA) attention.
        self.model.set_attn_implementation({"text_config": name} if self.multimodal else name)

    def set_vision_attention_implementation(self, name: str) -> None:
        self.model.set_attn_implementation({"vision_config": name})

    def vision_attention_implementation(self) -> str:
        return self.model.config.vision_config._attn_implementation

    def vision_saliency_tap(self) -> VisionSaliencyTap | None:
        """A tap on the vision layer whose attention ranks visual tokens; None for text models."""
        return None

    # -- tokens --------------------------------------------------------------------------------
    def tags(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> TokenTags:
        """Tags of a prompt given the top-level forward's input_ids and other inputs."""
        return TokenTags.text(*input_ids.shape)


def runs_of(mask_row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of True in a 1-D bool tensor."""
    padded = torch.cat([mask_row.new_zeros(1), mask_row.to(torch.int8), mask_row.new_zeros(1)])
    edges = torch.diff(padded.to(torch.int8)).nonzero().squeeze(1).tolist()
    return list(zip(edges[0::2], edges[1::2], strict=True))


def tag_grid(
    tags: TokenTags,
    row: int,
    start: int,
    count: int,
    modality: Modality,
    media: int,
    grid_w: int,
    grid_h: int,
    frame_offset: int = 0,
) -> None:
    """Tag ``count`` visual tokens laid out as frames of grid_h x grid_w, row-major."""
    index = torch.arange(count)
    per_frame = grid_h * grid_w
    span = slice(start, start + count)
    tags.modality[row, span] = int(modality)
    tags.media[row, span] = media
    tags.frame[row, span] = (index // per_frame + frame_offset).to(torch.int32)
    tags.row[row, span] = ((index % per_frame) // grid_w).to(torch.int32)
    tags.col[row, span] = (index % grid_w).to(torch.int32)
