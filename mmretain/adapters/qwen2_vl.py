"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): images and videos on a merged patch grid.

Wang et al., "Qwen2-VL", arXiv:2409.12191. ``image_grid_thw`` / ``video_grid_thw`` give each
medium's (t, h, w) in patches; every ``merge x merge`` patches become one token.
"""

from __future__ import annotations

from typing import Any

import torch

from ..compat import rope_index
from ..tags import Modality, TokenTags
from ..vision_saliency import VisionSaliencyTap
from .base import Adapter, tag_grid


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl (Qwen2-VL)"
    model_types = ("qwen2_vl",)
    multimodal = True
    max_aspect_ratio = 200  # transformers' smart_resize refuses frames any longer

    def vision_saliency_tap(self) -> VisionSaliencyTap:
        # No CLS token: saliency is the attention a patch receives in the last vision block,
        # summed over the merge x merge patches that become one LLM token.
        merge = self.model.config.vision_config.spatial_merge_size
        attention = self.model.model.visual.blocks[-1].attn
        return VisionSaliencyTap(attention, has_cls=False, patches_per_token=merge * merge)

    def position_ids(
        self,
        token_types: torch.Tensor,
        image_grids: torch.Tensor | None,
        video_grids: torch.Tensor | None,
        second_per_grid_ts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Qwen2-VL's temporal positions count patches, not seconds: second_per_grid_ts is unused.
        # M-RoPE: the model's own rule, over the whole sequence; callers slice what they feed.
        if image_grids is None and video_grids is None:
            return super().position_ids(token_types, None, None).expand(3, -1, -1)
        return rope_index(
            self.model,
            token_types,
            image_grid_thw=image_grids,
            video_grid_thw=video_grids,
        )

    def shape_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.expand(3, -1, -1)

    @property
    def merge_area(self) -> int:
        return self.model.config.vision_config.spatial_merge_size**2

    @property
    def temporal_patch(self) -> int:
        return self.model.config.vision_config.temporal_patch_size

    def round_chunk_frames(self, frames: int) -> int:
        # Frames pair up into temporal patches; an odd chunk would pad a frame mid-video.
        return max(self.temporal_patch, frames - frames % self.temporal_patch)

    def seconds_per_grid(self, sampled_fps: float) -> float:
        return self.temporal_patch / sampled_fps

    def planned_video_grid(self, chunk: dict[str, torch.Tensor], total_frames: int):
        grid = chunk["video_grid_thw"][0].clone()
        grid[0] = -(-total_frames // self.temporal_patch)
        return grid

    def video_token_grid(self, chunk: dict[str, torch.Tensor], tokens: int, frames: int):
        merge = self.model.config.vision_config.spatial_merge_size
        _, h, w = chunk["video_grid_thw"][0].tolist()
        return h // merge, w // merge

    def video_chunk_embeddings(self, chunk: dict[str, torch.Tensor]) -> torch.Tensor:
        # The vision encoder attends within each temporal patch only, so encoding a video
        # chunk by chunk gives the same features as encoding it whole.
        features = self.model.model.get_video_features(
            chunk["pixel_values_videos"], chunk["video_grid_thw"], return_dict=True
        )
        return torch.cat(features.pooler_output, dim=0)

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
