"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): merged patch grids, interleaved M-RoPE, DeepStack.

Qwen Team, "Qwen3-VL Technical Report", arXiv:2511.21631; DeepStack: Meng et al.,
arXiv:2406.04334. Images are laid out as in Qwen2-VL. A video is written one temporal patch at a
time, ``<t seconds><|vision_start|>`` tokens ``<|vision_end|>``, so each temporal patch is its own
run of video tokens with text between. M-RoPE gives all of a run the temporal index where the run
starts (time lives in the timestamps) and interleaves the t/h/w frequencies. The vision
encoder also hands features of early layers to the first decoder layers ("DeepStack"), added at
the visual positions of the prompt. So a streamed video goes in chunk by chunk as prompt
tokens with their frames (timestamps included) through the model's own forward, not as
precomputed embeddings.

Tags: ``frame`` of a video token is its temporal patch; ``row``/``col`` are on the merged grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import Qwen3VLVideoProcessor
from transformers.image_utils import SizeDict

from ..compat import video_placeholder_as_processed
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
            "before every temporal patch. Stream each chunk as prompt tokens with its frames "
            "(video_chunk_prompt) instead."
        )

    def video_prompt_text(self, processor: Any, text: str) -> str:
        # Each chunk brings its own <|vision_start|>/<|vision_end|> per temporal patch; whether the
        # template's pair around the whole video stays depends on the transformers version, so
        # the processor's own rule decides (see compat).
        return video_placeholder_as_processed(processor, text)

    def video_chunk_prompt(
        self,
        processor: Any,
        frames: np.ndarray,
        indices: Sequence[int],
        fps: float,
        total_frames: int,
    ) -> dict[str, torch.Tensor]:
        # The model's own forward then encodes the frames, adds DeepStack features at the video
        # positions and embeds the timestamps, exactly as for the whole video at once.
        videos = processor.video_processor
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]
        # The processor sizes frames from a pixel budget shared by all frames it is given, so a
        # chunk alone would come out larger than in the whole video: size it as the whole video.
        height, width = self._frame_size(videos, clip.shape[-2:], total_frames)
        # The resize the processor applies once it has chosen the size.
        resized = super(Qwen3VLVideoProcessor, videos).resize(
            clip, SizeDict(height=height, width=width), videos.resample
        )
        # Timestamps come from the chunk's frame indices in the file and the file's frame rate.
        metadata = {"fps": fps, "frames_indices": list(indices), "total_num_frames": len(frames)}
        out = processor(
            text=[processor.video_token],
            videos=[resized[0]],
            video_metadata=[metadata],
            do_sample_frames=False,
            do_resize=False,
            add_special_tokens=False,
            return_tensors="pt",
        )
        names = ("input_ids", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw")
        return {name: out[name] for name in names}

    @staticmethod
    def _frame_size(videos: Any, frame: torch.Size, total_frames: int) -> tuple[int, int]:
        """(height, width) the processor gives each frame of a ``total_frames``-frame video."""
        # Asked about an empty batch, the processor's own resize shows its target size for free.
        empty = torch.empty(0, total_frames, 3, *frame, dtype=torch.uint8)
        sized = videos.resize(
            empty,
            videos.size,
            videos.resample,
            factor=videos.patch_size * videos.merge_size,
            temporal_factor=videos.temporal_patch_size,
            cap_pixels_per_frame=videos.cap_pixels_per_frame,
        )
        return sized.shape[-2], sized.shape[-1]

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
