"""`Session`: one retained context (a conversation or a video) that grows call by call.

A session owns a `RetentionCache` and the layout of every token it has seen (modality type and
media grids), so it can give each new token the position it would have had in one full
forward — M-RoPE included — whatever was evicted before. It prefills token ids (with their
media) or precomputed embeddings (video chunks), and decodes greedily.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from .adapters.base import tag_grid
from .cache import RetentionCache
from .compat import CACHE_KWARG
from .engine import RetentionRun
from .tags import Modality, TokenTags

# mm_token_type_ids values, the convention of transformers' VLM processors.
TEXT_TYPE, IMAGE_TYPE, VIDEO_TYPE = 0, 1, 2


@dataclass
class Layout:
    """Everything about the tokens seen so far that positions depend on."""

    token_types: list[torch.Tensor] = field(default_factory=list)  # int [n_i] per extension
    image_grids: list[torch.Tensor] = field(default_factory=list)  # [3] (t, h, w) per image
    video_grids: list[torch.Tensor] = field(default_factory=list)  # [3] per video
    video_seconds: list[float] = field(default_factory=list)  # seconds per temporal patch

    def types(self) -> torch.Tensor:
        return torch.cat(self.token_types) if self.token_types else torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return sum(t.numel() for t in self.token_types)


class Session:
    """A growing context under a retention run: prefill, decode, snapshot, restore."""

    def __init__(self, run: RetentionRun):
        self.run = run
        self.model = run.model
        self.adapter = run.adapter
        self.cache: RetentionCache = run.new_cache()
        self.layout = Layout()
        self.next_position = 0  # where decoding continues: one past the largest position

    # -- positions -----------------------------------------------------------------------------
    def positions(self, layout: Layout | None = None) -> torch.Tensor:
        """Position ids of every token of ``layout`` (default: this session's), [rows, 1, n]."""
        layout = layout or self.layout
        return self.adapter.position_ids(
            layout.types()[None],
            torch.stack(layout.image_grids) if layout.image_grids else None,
            torch.stack(layout.video_grids) if layout.video_grids else None,
            torch.tensor(layout.video_seconds) if layout.video_seconds else None,
        )

    # -- prefill -------------------------------------------------------------------------------
    def extend(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prefill the new tokens ``inputs`` (a processor's output for them, media included).

        Returns the logits of the last token, [1, vocab].
        """
        inputs = dict(inputs)
        input_ids = inputs["input_ids"]
        types = self.adapter.token_types(input_ids)[0]
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = types[None].to(inputs["mm_token_type_ids"].dtype)
        self.layout.token_types.append(types)
        for key, grids in (
            ("image_grid_thw", self.layout.image_grids),
            ("video_grid_thw", self.layout.video_grids),
        ):
            if inputs.get(key) is not None:
                grids.extend(inputs[key])
        if inputs.get("second_per_grid_ts") is not None:
            self.layout.video_seconds.extend(inputs["second_per_grid_ts"].tolist())
        positions = self.positions()
        self.next_position = int(positions.max()) + 1
        n = input_ids.shape[1]
        out = self.model(
            **inputs,
            position_ids=self.adapter.shape_positions(positions[..., -n:]),
            **{CACHE_KWARG: self.cache},
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1]

    def extend_embeddings(
        self, embeddings: torch.Tensor, positions: torch.Tensor, tags: TokenTags
    ) -> torch.Tensor:
        """Prefill precomputed embeddings [1, n, d] at ``positions`` [rows, 1, n] (video chunks).

        The caller keeps the layout: it alone knows the whole video's planned grid.
        """
        self.cache.expect_tags(tags)
        out = self.model(
            inputs_embeds=embeddings,
            position_ids=self.adapter.shape_positions(positions),
            **{CACHE_KWARG: self.cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self.next_position = max(self.next_position, int(positions.max()) + 1)
        return out.logits[:, -1]

    # -- decode --------------------------------------------------------------------------------
    def generate(self, logits: torch.Tensor, max_new_tokens: int, eos_ids: set[int]) -> list[int]:
        """Greedy tokens from ``logits`` on; like transformers' generate, the last token (or an
        end-of-sequence token) is not fed back into the cache: the next `extend` brings it, as
        part of the conversation that follows."""
        tokens: list[int] = []
        for step in range(max_new_tokens):
            token = int(logits.argmax(dim=-1))
            tokens.append(token)
            if token in eos_ids or step == max_new_tokens - 1:
                break
            position = torch.full((1, 1), self.next_position, dtype=torch.long)
            logits = self.model(
                input_ids=torch.tensor([[token]]),
                position_ids=self.adapter.shape_positions(position[None]),
                **{CACHE_KWARG: self.cache},
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
            self.next_position += 1
        self.layout.token_types.append(torch.zeros(len(tokens) - 1, dtype=torch.long))
        return tokens

    # -- compress once, answer many ------------------------------------------------------------
    def snapshot(self) -> Session:
        """An independent copy of this session (the cache is cloned: budget-sized)."""
        twin = copy.copy(self)
        twin.cache = copy.deepcopy(self.cache)
        twin.layout = copy.deepcopy(self.layout)
        return twin


def video_tags(count: int, media: int, frame_offset: int, grid_h: int, grid_w: int) -> TokenTags:
    """Tags of ``count`` video tokens laid out frame by frame on a grid_h x grid_w grid."""
    tags = TokenTags.text(1, count)
    tag_grid(tags, 0, 0, count, Modality.VIDEO, media, grid_w, grid_h, frame_offset)
    return tags
