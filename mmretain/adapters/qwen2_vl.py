"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): images and videos on a merged patch grid.

Wang et al., "Qwen2-VL", arXiv:2409.12191. ``image_grid_thw`` / ``video_grid_thw`` give each
medium's (t, h, w) in patches; every ``merge x merge`` patches become one token.
"""

from __future__ import annotations

from typing import Any

import torch

from ..tags import Modality, TokenTags
from ..vision_saliency import VisionSaliencyTap
from .base import Adapter, tag_grid


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl (Qwen2-VL)"
    model_types = ("qwen2_vl",)
    multimodal = True

    def vision_saliency_tap(self) -> VisionSaliencyTap:
        # No CLS token: saliency is the attention a patch receives in the last vision block,
        # summed over the merge x merge patches that become one LLM token.
        merge = self.model.config.vision_config.spatial_merge_size
        attention = self.model.model.visual.blocks[-1].attn
        return VisionSaliencyTap(attention, has_cls=False, patches_per_token=merge * merge)

    def tags(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> TokenTags:
        tags = TokenTags.text(*input_ids.shape)
        config = self.model.config
        merge = config.vision_config.spatial_merge_size
        kinds = (
            (config.image_token_id, inputs.get("image_grid_thw"), Modality.IMAGE),
            (config.video_token_id, inputs.get("video_grid_thw"), Modality.VIDEO),
        )
        for token_id, grids, modality in kinds:
            if grids is None:
                continue
            grids = iter(grids.tolist())
            media = 0
            for b in range(input_ids.shape[0]):
                positions = (input_ids[b].cpu() == token_id).nonzero().squeeze(1)
                done = 0
                while done < len(positions):
                    t, h, w = next(grids)
                    count = t * (h // merge) * (w // merge)
                    start = int(positions[done])
                    tag_grid(tags, b, start, count, modality, media, w // merge, h // merge)
                    done += count
                    media += 1
        return tags
