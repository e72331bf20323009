"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one square grid of patch tokens per image.

Liu et al., "Improved Baselines with Visual Instruction Tuning", arXiv:2310.03744.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..tags import Modality, TokenTags
from .base import Adapter, runs_of, tag_grid


class LlavaAdapter(Adapter):
    family = "llava (LLaVA-1.5)"
    model_types = ("llava",)
    multimodal = True

    def tags(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> TokenTags:
        tags = TokenTags.text(*input_ids.shape)
        image_token = self.model.config.image_token_id
        for b in range(input_ids.shape[0]):
            # A processor writes each image as one run of image tokens.
            for media, (start, end) in enumerate(runs_of(input_ids[b].cpu() == image_token)):
                side = math.isqrt(end - start)
                width = side if side * side == end - start else end - start
                tag_grid(tags, b, start, end - start, Modality.IMAGE, media, width, max(side, 1))
        return tags
