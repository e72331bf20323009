"""The interface every model family implements, and the shared machinery behind it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import MediaError, UnsupportedModelError
from ..tags import Modality, TokenTags
from ..vision_saliency import VisionSaliencyTap


@dataclass(frozen=True)
class VideoPrompt:
    """A user turn holding a video and a question, as token ids around the video: ``prefix``
    goes in before the streamed video, ``suffix`` after it; ``question`` is the span [start,
    end) of the question's text in the prefix (``question_first``) or else the suffix."""

    prefix: list[int]
    suffix: list[int]
    question: tuple[int, int]
    question_first: bool = False


def changed_span(ids: list[int], blank: list[int]) -> tuple[int, int]:
    """The span [start, end) of ``ids`` that differs from ``blank``: what was left out of it."""
    start = 0
    while start < min(len(ids), len(blank)) and ids[start] == blank[start]:
        start += 1
    end = 0
    while end < min(len(ids), len(blank)) - start and ids[-1 - end] == blank[-1 - end]:
        end += 1
    return start, len(ids) - end


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

    # -- positions -----------------------------------------------------------------------------
    def token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """0 text, 1 image, 2 video per token, from the family's placeholder ids."""
        types = torch.zeros_like(input_ids, dtype=torch.long)
        config = self.model.config
        for value, name in ((1, "image_token_id"), (2, "video_token_id")):
            token = getattr(config, name, None)
            if token is None:
                token = getattr(config, name.replace("_id", "_index"), None)
            if token is not None:
                types[input_ids == token] = value
        return types

    def position_ids(
        self,
        token_types: torch.Tensor,
        image_grids: torch.Tensor | None,
        video_grids: torch.Tensor | None,
        second_per_grid_ts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Positions of a whole sequence [rows, 1, n]; one row for 1-D RoPE families.

        ``second_per_grid_ts`` (seconds per temporal patch, per video) matters only to families
        whose temporal positions follow time (Qwen2.5-VL)."""
        return torch.arange(token_types.shape[1])[None, None]

    def shape_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions [rows, 1, n] as the model's forward takes them."""
        return positions[0]

    # -- video streaming -----------------------------------------------------------------------
    merge_area: ClassVar[int] = 1  # encoder patches per LLM token
    # Longest over shortest side of a frame the processor can resize; math.inf: any.
    max_aspect_ratio: ClassVar[float] = math.inf

    def check_frame_size(self, width: int, height: int, where: object) -> None:
        """Refuse frames of a shape the processor cannot resize, before any is decoded."""
        ratio = max(width, height) / max(min(width, height), 1)
        if ratio > self.max_aspect_ratio:
            short = math.ceil(max(width, height) / self.max_aspect_ratio)
            raise MediaError(
                f"{where}: frames are {width}x{height} pixels, the long side {ratio:g} times the "
                f"short one; the {self.family} processor takes at most "
                f"{self.max_aspect_ratio:g} times, so pad the short side to at least {short} "
                "pixels or crop the long one (e.g. with ffmpeg -vf pad or crop)"
            )

    @property
    def video_token_id(self) -> int | None:
        config = self.model.config
        return getattr(config, "video_token_id", None) or getattr(config, "video_token_index", None)

    def round_chunk_frames(self, frames: int) -> int:
        """A chunk size the encoder can take without padding frames mid-video."""
        return frames

    def process_video_chunk(self, processor: Any, frames) -> dict[str, torch.Tensor]:
        """The processor's tensors for one chunk of frames [n, H, W, 3], frames kept as given."""
        out = processor.video_processor(
            videos=[frames], do_sample_frames=False, return_tensors="pt"
        )
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    def seconds_per_grid(self, sampled_fps: float) -> float | None:
        """Seconds one temporal step of a video covers, for families whose positions use it."""
        return None

    def planned_video_grid(self, chunk: dict[str, torch.Tensor], total_frames: int):
        """The (t, h, w) patch grid of the whole video, for families whose positions need it."""
        return None

    def video_token_grid(self, chunk: dict[str, torch.Tensor], tokens: int, frames: int):
        """(rows, cols) of one frame's tokens."""
        side = math.isqrt(max(tokens // max(frames, 1), 1))
        return side, side

    def chat_inputs(
        self,
        processor: Any,
        messages: list[dict[str, Any]],
        images: list,
        *,
        reply_next: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The processor's inputs for a conversation (its chat template applied, ``images`` the
        loaded images its messages show, in order), ending in the assistant's turn to reply
        unless ``reply_next`` is False."""
        text = processor.apply_chat_template(
            messages, add_generation_prompt=reply_next, tokenize=False
        )
        return processor(text=[text], images=images or None, return_tensors="pt")

    def video_prompt(
        self, processor: Any, question: str, *, question_first: bool = False
    ) -> VideoPrompt:
        """The chat-formatted prompt of one user turn holding a video and ``question``, as the
        token ids before and after the video (`stream_video` takes the first; the second goes in
        after the video, with generate) and where the question lies in them."""
        prefix, suffix = self._video_prompt_ids(processor, question, question_first)
        blank = self._video_prompt_ids(processor, "", question_first)
        side = 0 if question_first else 1
        span = changed_span((prefix, suffix)[side], blank[side])
        return VideoPrompt(prefix, suffix, span, question_first)

    def _video_prompt_ids(
        self, processor: Any, question: str, question_first: bool
    ) -> tuple[list[int], list[int]]:
        parts = [{"type": "video"}, {"type": "text", "text": question}]
        messages = [{"role": "user", "content": parts[::-1] if question_first else parts}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # As the processor itself rewrites it around the placeholder (Qwen3-VL, 5.25 on).
        text = self.video_prompt_text(processor, text)
        ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids.count(self.video_token_id) != 1:
            raise UnsupportedModelError(
                "the processor's chat template does not render exactly one video placeholder; "
                "use a video-capable model and processor"
            )
        cut = ids.index(self.video_token_id)
        return ids[:cut], ids[cut + 1 :]

    def video_prompt_text(self, processor: Any, text: str) -> str:
        """The chat-formatted ``text`` of a streamed video's prompt with its placeholder as the
        processor replaces it, by one video token: the text around that token is what goes in
        before and after the chunks."""
        return text

    def video_chunk_prompt(
        self,
        processor: Any,
        frames: np.ndarray,
        indices: Sequence[int],
        fps: float,
        total_frames: int,
    ) -> dict[str, torch.Tensor] | None:
        """One chunk of frames [n, H, W, 3] as prompt tokens with its frames (the processor's
        inputs), for families whose prompt writes text between temporal patches; None for the
        others, whose chunks go in as embeddings (`video_chunk_embeddings`) on a planned grid.

        ``indices`` are the chunk's frame numbers in a file of ``fps`` frames per second, and
        ``total_frames`` the frames of the whole streamed video."""
        return None

    def video_chunk_embeddings(self, chunk: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings [n, d] of one chunk of frames, as the processor prepared them."""
        raise UnsupportedModelError(f"{self.family} has no video input; give it images instead")

    def video_tail_embeddings(self) -> torch.Tensor:
        """Embeddings [k, d] that close a video after its last chunk (none for most families)."""
        return torch.zeros(0, self.text_config.hidden_size)

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
    first: int = 0,
) -> None:
    """Tag ``count`` visual tokens laid out as frames of grid_h x grid_w, row-major.

    ``first`` is the index within that layout of the token at ``start``, for a run that
    continues a layout part-way (a newline token closing a grid, a chunk starting mid-frame).
    """
    index = torch.arange(first, first + count)
    per_frame = grid_h * grid_w
    span = slice(start, start + count)
    tags.modality[row, span] = int(modality)
    tags.media[row, span] = media
    tags.frame[row, span] = (index // per_frame + frame_offset).to(torch.int32)
    tags.row[row, span] = ((index % per_frame) // grid_w).to(torch.int32)
    tags.col[row, span] = (index % grid_w).to(torch.int32)
