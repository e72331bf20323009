"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one square grid of patch tokens per image.

Liu et al., "Improved Baselines with Visual Instruction Tuning", arXiv:2310.03744.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..tags import Modality, TokenTags
from ..vision_saliency import VisionSaliencyTap
from .base import Adapter, runs_of, tag_grid


class LlavaAdapter(Adapter):
    family = "llava (LLaVA-1.5)"
    model_types = ("llava",)
    multimodal = True

    def vision_saliency_tap(self) -> VisionSaliencyTap:
        # hidden_states[k] is the output of encoder layer k - 1, so a negative feature layer
        # indexes the layers directly and a non-negative one is shifted by the embeddings.
        feature_layer = self.model.config.vision_feature_layer
        if not isinstance(feature_layer, int):
            feature_layer = feature_layer[-1]
        tower = self.model.model.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers  # older towers nest it
        index = feature_layer if feature_layer < 0 else feature_layer - 1
        has_cls = self.model.config.vision_feature_select_strategy == "default"
        return VisionSaliencyTap(layers[index].self_attn, has_cls=has_cls, patches_per_token=1)

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
