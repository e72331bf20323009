"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): merged patch grids, interleaved M-RoPE, DeepStack.

Qwen Team, "Qwen3-VL Technical Report", arXiv:2511.21631; DeepStack: Meng et al.,
arXiv:2406.04334. Images are laid out as in Qwen2-VL. A video is written one temporal patch at a
time, ``<t seconds><|vision_start|>`` tokens ``<|vision_end|>``, so each temporal patch is its own
run of video tokens with text between. M-RoPE gives all of a run the temporal index where the run
starts (time lives in the timestamps) and interleaves the t/h/w frequencies. The vision
encoder also hands features of early layers to the first decoder layers ("DeepStack"), added at
the visual positions of the prompt.

Tags: ``frame`` of a video token is its temporal patch; ``row``/``col`` are on the merged grid.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UnsupportedModelError
from ..tags import Modality, TokenTags
from .base import tag_grid
from .qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl (Qwen3-VL)"
    model_types = ("qwen3_vl",)

    def video_chunk_embeddings(self, chunk: dict[str, torch.Tensor]) -> torch.Tensor:
        raise UnsupportedModelError(
            "Qwen3-VL cannot be streamed as precomputed embeddings: its encoder also adds "
            "DeepStack features inside the first decoder layers, and its prompt puts a timestamp "
            "before every temporal patch. Give the video with the prompt to generate instead."
        )

    def tags(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> TokenTags:
        tags = TokenTags.text(*input_ids.shape)
        ids = input_ids.cpu()
        config = self.model.config
        merge = config.vision_config.spatial_merge_size
        kinds = (
            (config.image_token_id, inputs.get("image_grid_thw"), Modality.IMAGE),
            (config.video_token_id, inputs.get("video_grid_thw"), Modality.VIDEO),
        )
        for token_id, grids, modality in kinds:
            tags.modality[ids == token_id] = int(modality)
            if grids is None:
                continue
            # One run of tokens per temporal patch (an image is one), in prompt order.
            runs = iter(
                (media, frame, h // merge, w // merge)
                for media, (t, h, w) in enumerate(grids.tolist())
                for frame in range(t)
            )
            for b in range(ids.shape[0]):
                positions = (ids[b] == token_id).nonzero().squeeze(1).tolist()
                done = 0
                while done < len(positions):
                    media, frame, rows, cols = next(runs)
                    start = positions[done]
                    tag_grid(tags, b, start, rows * cols, modality, media, cols, rows, frame)
                    done += rows * cols
        return tags
