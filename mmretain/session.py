"""`Session`: one retained context (a conversation or a video) that grows call by call.

A session owns a `RetentionCache` and the layout of every token it has seen (modality type and
media grids), so it can give each new token the position it would have had in one full
forward — M-RoPE included — whatever was evicted before. It prefills token ids (with their
media) or precomputed embeddings (video chunks), and answers with the model's own
``generate`` on its cache, so sampling, stop strings and every other generation option work.

Use it inside `mmretain.retain` (or a `RetainedVLM` call)::

    with mmretain.retain(model, cfg) as run:
        session = Session(run, processor.tokenizer)
        stream_video(session, processor, mmretain.media.Video("clip.mp4"), prefix_ids)
        reply = session.generate({"input_ids": question_ids}, GenerationConfig(max_new_tokens=32))
        print(reply.text)
        # or model.generate(**session.generate_inputs(question_ids), max_new_tokens=32)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig

from .cache import RetentionCache
from .compat import CACHE_KWARG
from .engine import RetentionRun
from .tags import TokenTags

# mm_token_type_ids values, the convention of transformers' VLM processors.
TEXT_TYPE, IMAGE_TYPE, VIDEO_TYPE = 0, 1, 2
# Processor outputs that carry media; a prompt holding any is prefilled before generate runs.
_MEDIA_KEYS = ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw")
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


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


@dataclass
class Generation:
    """What `Session.generate` produced."""

    tokens: list[int]  # the new tokens, an end-of-sequence token included
    logits: tuple[torch.Tensor, ...] | None = None  # per step [1, vocab], when asked for
    # The tokens as text, special tokens left out: with a session given a tokenizer.
    text: str | None = None


class Session:
    """A growing context under a retention run: prefill, generate, snapshot."""

    def __init__(self, run: RetentionRun, tokenizer: Any = None):
        """A new context on a fresh cache of ``run``; with ``tokenizer`` (the processor's), each
        `generate` also gives its reply as text."""
        self.run = run
        self.tokenizer = tokenizer
        self.model = run.model
        self.adapter = run.adapter
        self.cache: RetentionCache = run.new_cache()
        self.layout = Layout()
        self.ids: list[int] = []  # every token seen; video placeholders for streamed chunks

    @property
    def device(self) -> torch.device:
        return self.model.device

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
    # Inference only: without no_grad the cached keys would carry the graph of every forward,
    # hold its activations, and refuse the deepcopy a snapshot makes.
    @torch.no_grad()
    def extend(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prefill the new tokens ``inputs`` (a processor's output for them, media included).

        Returns the logits of the last token, [1, vocab].
        """
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        input_ids = inputs["input_ids"]
        types = self.adapter.token_types(input_ids)[0].cpu()
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = types[None].to(inputs["mm_token_type_ids"])
        self.layout.token_types.append(types)
        for key, grids in (
            ("image_grid_thw", self.layout.image_grids),
            ("video_grid_thw", self.layout.video_grids),
        ):
            if inputs.get(key) is not None:
                grids.extend(inputs[key].cpu())
        if inputs.get("second_per_grid_ts") is not None:
            self.layout.video_seconds.extend(inputs["second_per_grid_ts"].tolist())
        positions = self.positions()
        self.ids.extend(input_ids[0].tolist())
        n = input_ids.shape[1]
        out = self.model(
            **inputs,
            position_ids=self.adapter.shape_positions(positions[..., -n:]).to(self.device),
            **{CACHE_KWARG: self.cache},
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1]

    @torch.no_grad()
    def extend_embeddings(
        self, embeddings: torch.Tensor, positions: torch.Tensor, tags: TokenTags
    ) -> torch.Tensor:
        """Prefill precomputed embeddings [1, n, d] at ``positions`` [rows, 1, n] (video chunks).

        The caller keeps the layout: it alone knows the whole video's planned grid.
        """
        self.cache.expect_tags(tags)
        out = self.model(
            inputs_embeds=embeddings,
            position_ids=self.adapter.shape_positions(positions).to(self.device),
            **{CACHE_KWARG: self.cache},
            use_cache=True,
            logits_to_keep=1,
        )
        placeholder = self.adapter.video_token_id or 0
        self.ids.extend([placeholder] * embeddings.shape[1])
        return out.logits[:, -1]

    # -- generate ------------------------------------------------------------------------------
    def generate_inputs(
        self, input_ids: torch.Tensor, question: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` that continue this session with the text
        tokens ``input_ids`` [1, n]: every id seen plus the new ones, their positions (those of
        one full forward; the cached part is sliced off by generate) and the session's cache.

        The new tokens join the prompt a fraction budget is taken of, and ``question`` (a span
        of them; default: all) becomes the protected question; an empty span leaves the
        question as it was.
        """
        n = input_ids.shape[1]
        seen = self.cache.get_seq_length()
        self._announce(n, question)
        text = torch.full((n,), TEXT_TYPE, dtype=torch.long)
        layout = copy.copy(self.layout)
        layout.token_types = [*self.layout.token_types, text]
        positions = self.positions(layout)
        # Only the new tokens' positions are read: generate slices off what the cache holds.
        positions = torch.cat(
            [positions.new_zeros(*positions.shape[:2], seen), positions[..., -n:]], -1
        )
        return {
            "input_ids": torch.cat(
                [torch.tensor([self.ids[:seen]], dtype=torch.long), input_ids.cpu()], dim=1
            ).to(self.device),
            "position_ids": self.adapter.shape_positions(positions).to(self.device),
            CACHE_KWARG: self.cache,
        }

    def generate(
        self,
        inputs: dict[str, torch.Tensor],
        generation_config: GenerationConfig | None = None,
        question: tuple[int, int] | None = None,
    ) -> Generation:
        """Reply to the new tokens ``inputs`` with ``model.generate`` on this session's cache.

        ``inputs`` are a processor's output for the new tokens; media in them are prefilled
        first, and the text after the last of them goes in with generate.
        ``question`` is the span [start, end) of ``inputs`` that holds the question, whose
        text eviction protects (``protect_turn``); by default, all of ``inputs`` — so what the
        session held before is compressed and the question kept, as kvpress splits a context
        from its question. An empty span leaves the question as it was (one asked before a
        streamed video). ``generation_config`` defaults to the model's own.
        Like transformers' generate, the last new token is not fed back into the cache: the
        next call brings it, as part of the conversation that follows.
        """
        config = copy.deepcopy(generation_config or self.model.generation_config)
        config.return_dict_in_generate = True
        input_ids = inputs["input_ids"]
        cut = self._text_tail_start(inputs)
        self._announce(input_ids.shape[1], question)
        if cut:
            self.extend({k: _head(k, v, cut) for k, v in inputs.items()})
        tail = input_ids[:, cut:]
        before = self.cache.get_seq_length()
        kwargs = self.generate_inputs(tail, question=(0, 0))  # the question is marked above
        out = self.model.generate(**kwargs, generation_config=config)
        tokens = out.sequences[0, before + tail.shape[1] :].tolist()
        added = self.cache.get_seq_length() - before
        self.ids.extend((tail[0].tolist() + tokens)[:added])
        self.layout.token_types.append(torch.full((added,), TEXT_TYPE, dtype=torch.long))
        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return Generation(tokens, out.logits, text)

    def _announce(self, n: int, question: tuple[int, int] | None) -> None:
        """The next ``n`` tokens join the prompt a fraction budget is taken of, and their span
        ``question`` (default: all; an empty one changes nothing) becomes the question."""
        seen = self.cache.get_seq_length()
        self.cache.expect(seen + n)
        start, end = question or (0, n)
        if end > start:
            self.cache.start_turn(seen + start, seen + end)

    def _text_tail_start(self, inputs: dict[str, torch.Tensor]) -> int:
        """Where the text after the prompt's last media token starts (0 without media)."""
        if not any(inputs.get(key) is not None for key in _MEDIA_KEYS):
            return 0
        media = (self.adapter.token_types(inputs["input_ids"])[0] != TEXT_TYPE).nonzero()
        return int(media[-1]) + 1 if len(media) else 0

    # -- compress once, answer many ------------------------------------------------------------
    def snapshot(self) -> Session:
        """An independent copy of this session (the cache is cloned: budget-sized)."""
        twin = copy.copy(self)
        twin.cache = copy.deepcopy(self.cache)
        twin.layout = copy.deepcopy(self.layout)
        twin.ids = list(self.ids)
        return twin


def _head(key: str, value: Any, cut: int) -> Any:
    """The first ``cut`` tokens' share of one processor output (per-token tensors are cut)."""
    return value[:, :cut] if key in _PER_TOKEN_KEYS else value
