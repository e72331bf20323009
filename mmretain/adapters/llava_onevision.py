"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): anyres images and pooled video.

Li et al., "LLaVA-OneVision: Easy Visual Task Transfer", arXiv:2408.03326. Images follow
LLaVA-NeXT's layout (see `mmretain.adapters.llava_next`), except that a canvas of more than
``anyres_max_N`` crops is shrunk to about N crops, and the images of a multi-image prompt are
encoded from their base view alone. A video is each frame's features pooled 2 x 2, frame after
frame, then ONE ``image_newline`` closing the whole video.

Video tags: ``frame`` is the frame index, ``row``/``col`` the position on the pooled grid; the
closing newline is tagged ``frame == frames - 1, row == side - 1, col == side`` (side: pooled).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..compat import pack_image_features
from ..tags import Modality, TokenTags
from .base import tag_grid
from .llava_next import LlavaNextAdapter, tag_media


@dataclass(frozen=True)
class VideoLayout:
    """``frames`` grids of ``side x side`` pooled tokens, then one newline."""

    frames: int
    side: int

    @property
    def tokens(self) -> int:
        return self.frames * self.side * self.side + 1

    def tag(self, tags: TokenTags, row: int, start: int, modality: Modality, media: int) -> None:
        side, count = self.side, self.frames * self.side * self.side
        tag_grid(tags, row, start, count, modality, media, side, side)
        # The newline closes the last frame's last row, one column past its end.
        last = self.frames - 1
        newline = side * side + side - 1
        tag_grid(tags, row, start + count, 1, modality, media, side + 1, side, last, newline)


class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "llava_onevision (LLaVA-OneVision)"
    model_types = ("llava_onevision",)

    def images(self, inputs: dict[str, Any]) -> list[tuple[list[int], bool]]:
        sizes = inputs.get("image_sizes")
        if sizes is None:
            return []
        counts = inputs.get("batch_num_images")
        if counts is None:  # the model then crops every image
            return [(size, True) for size in sizes.tolist()]
        # Only a prompt's sole image is cropped; several images keep their base view alone.
        cropped = [n == 1 for n in counts.tolist() for _ in range(n)]
        return list(zip(sizes.tolist(), cropped, strict=True))

    def canvas_shape(self, rows: int, cols: int) -> tuple[int, int]:
        max_crops = int(self.model.config.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (max_crops * self.side**2))
        if ratio > 1.1:  # the model's threshold for interpolating the canvas down
            return int(rows // ratio), int(cols // ratio)
        return rows, cols

    @property
    def pooled_side(self) -> int:
        return math.ceil(self.side / 2)

    def videos(self, inputs: dict[str, Any]) -> list[VideoLayout]:
        pixels = inputs.get("pixel_values_videos")
        if pixels is None:
            return []
        return [VideoLayout(pixels.shape[1], self.pooled_side)] * pixels.shape[0]

    def tags(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> TokenTags:
        tags = super().tags(input_ids, inputs)
        video_token = self.model.config.video_token_id
        tag_media(tags, input_ids, video_token, Modality.VIDEO, self.videos(inputs))
        return tags

    # -- streaming -----------------------------------------------------------------------------
    def video_chunk_embeddings(self, chunk: dict[str, torch.Tensor]) -> torch.Tensor:
        # Frames are encoded and pooled one by one, so chunks concatenate to the whole video,
        # except for the newline each call appends: that one closes the video, once.
        features = self.model.model.get_video_features(
            chunk["pixel_values_videos"], return_dict=True
        )
        return features.pooler_output[:, :-1].flatten(0, 1)

    def video_tail_embeddings(self) -> torch.Tensor:
        return self.model.model.image_newline.detach()[None]

    # -- VisionZip -----------------------------------------------------------------------------
    def pack_features(
        self, views: torch.Tensor, image_size: list[int], newline: torch.Tensor
    ) -> torch.Tensor:
        packed = pack_image_features(
            self.model, [views], [image_size], newline, self.model.config.vision_aspect_ratio
        )
        return packed[0]

    def pack_saliency(
        self, inputs: dict[str, Any], views: Iterator[torch.Tensor]
    ) -> list[torch.Tensor]:
        out = super().pack_saliency(inputs, views)
        side = self.side
        for video in self.videos(inputs):
            maps = torch.stack([next(views) for _ in range(video.frames)])
            pooled = self.model.model.apply_pooling(maps.view(video.frames, side * side, 1))
            out.append(torch.cat([pooled.flatten(), pooled.new_zeros(1)]))
        return out
