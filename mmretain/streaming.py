"""Streaming a video into a `Session`, chunk by chunk, evicting after each.

The video is never held whole: frames are decoded, encoded and prefilled ``chunk_frames`` at a
time, so memory depends on the budget and the chunk, not on the video's length. Positions are
those of one full forward over the whole video (M-RoPE included), planned from its first chunk.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import media
from .adapters.base import tag_grid
from .session import VIDEO_TYPE, Layout, Session
from .tags import Modality, TokenTags


@dataclass
class VideoProgress:
    """Reported after each chunk of a streamed video."""

    frames_done: int
    frames_total: int
    tokens_seen: int
    entries_kept: int
    entries_budget: int


def stream_video(
    session: Session,
    processor: Any,
    video: media.Video,
    prefix: Sequence[int] = (),
    *,
    question: tuple[int, int] | None = None,
    chunk_frames: int = 16,
    progress: Callable[[VideoProgress], None] | None = None,
    on_chunk: Callable[[int, int, int, int, int], None] | None = None,
) -> int:
    """Prefill the token ids ``prefix`` (the prompt's text before the video), then ``video``,
    into ``session``; returns the frames streamed.

    ``on_chunk(start, tokens, first_frame, frames, steps)`` hears, before each chunk goes in,
    that cache positions [start, start + tokens) will hold frames [first_frame, + frames) in
    ``steps`` equal temporal steps (a relevance prior marks them: `mmretain.relevance`).

    ``question`` is the span [start, end) of ``prefix`` holding a question asked before the
    video, whose text eviction then protects (``protect_turn``).

    The video's length is known from its first chunk, so a fraction budget is taken of the
    prefix and the whole video from the start (a question's tokens join when it is asked).
    A file cut short leaves the video shorter than planned: the budget follows what streamed.
    """
    adapter = session.adapter
    adapter.check_frame_size(video.info.width, video.info.height, video.info.path)
    cache = session.cache
    total = len(video.indices)
    chunk_frames = adapter.round_chunk_frames(chunk_frames)
    encoded = _encoded_chunks(adapter, processor, video, chunk_frames, total)
    first = next(encoded, None)
    video_tokens = 0 if first is None else _video_tokens(adapter, first, total)
    seen = cache.get_seq_length()
    cache.expect(seen + len(prefix) + video_tokens)
    if question is not None:
        cache.start_turn(seen + question[0], seen + question[1])
    if prefix:
        session.extend({"input_ids": torch.tensor([list(prefix)], dtype=torch.long)})
    plan: _VideoPlan | None = None
    done = 0
    for item in itertools.chain([] if first is None else [first], encoded):
        start = cache.get_seq_length()
        if item.prompt is not None:
            if on_chunk is not None:
                on_chunk(start, item.prompt["input_ids"].shape[-1], done, item.frames, 1)
            session.extend(item.prompt)
        else:
            if plan is None:
                plan = _VideoPlan.make(
                    adapter, session, item, video_tokens, total, video.sampled_fps
                )
            n = item.embeddings.shape[0]
            if on_chunk is not None:
                on_chunk(
                    start, n, done, item.frames, max(n // max(plan.grid_h * plan.grid_w, 1), 1)
                )
            positions, tags = plan.take(n, done)
            session.extend_embeddings(item.embeddings[None], positions, tags)
        done += item.frames
        if progress is not None:
            progress(_progress(session, done, total))
    # Chunks that went in as prompt tokens kept the session's layout themselves.
    if plan is not None:
        tail = adapter.video_tail_embeddings()
        if tail.shape[0]:
            positions, tags = plan.take(tail.shape[0], done)
            session.extend_embeddings(tail[None].to(session.model.dtype), positions, tags)
        plan.close(session)
    cache.prompt_tokens = cache.get_seq_length()
    session.run.maybe_evict(cache, decoding=False)
    return done


def _progress(session: Session, done: int, total: int) -> VideoProgress:
    stats = session.cache.stats
    budget = session.run.capacity(session.cache) if session.cache.initialized_layers else 0
    return VideoProgress(done, total, stats.tokens_seen, stats.entries_kept, budget)


@dataclass
class _EncodedChunk:
    """One chunk of a streamed video, ready for the model: a prompt, or a chunk's embeddings."""

    frames: int
    prompt: dict[str, torch.Tensor] | None = None
    chunk: Any = None
    embeddings: torch.Tensor | None = None


def _encoded_chunks(
    adapter, processor: Any, video: media.Video, chunk_frames: int, total: int
) -> Iterator[_EncodedChunk]:
    """Each chunk of ``video`` as the model takes it: a prompt (Qwen3-VL) or embeddings."""
    done = 0
    for frames in video.chunks(chunk_frames):
        indices = video.indices[done : done + len(frames)]
        done += len(frames)
        prompt = adapter.video_chunk_prompt(processor, frames, indices, video.info.fps, total)
        if prompt is not None:
            yield _EncodedChunk(len(frames), prompt=prompt)
        else:
            chunk = adapter.process_video_chunk(processor, frames)
            embeddings = adapter.video_chunk_embeddings(chunk)
            yield _EncodedChunk(len(frames), chunk=chunk, embeddings=embeddings)


def _video_tokens(adapter, first: _EncodedChunk, total_frames: int) -> int:
    """Tokens the whole video will bring, from its first chunk (for prompt chunks, an estimate:
    chunks are sized alike, but their timestamps may differ in length)."""
    if first.prompt is not None:
        return math.ceil(total_frames / first.frames) * first.prompt["input_ids"].shape[-1]
    grid = adapter.planned_video_grid(first.chunk, total_frames)
    if grid is not None:
        return int(grid.prod()) // adapter.merge_area
    per_frame = first.embeddings.shape[0] / first.frames
    return math.ceil(per_frame * total_frames) + adapter.video_tail_embeddings().shape[0]


@dataclass
class _VideoPlan:
    """Where each video token goes: positions from the whole planned video, sliced per chunk."""

    positions: torch.Tensor  # [rows, 1, n] over prefix + planned video tokens
    offset: int  # tokens before the video
    tokens_per_frame: float
    grid_h: int
    grid_w: int
    grid: torch.Tensor | None  # planned (t, h, w) for M-RoPE families
    seconds: float | None  # per temporal step, for families whose positions follow time
    used: int = 0

    @classmethod
    def make(
        cls,
        adapter,
        session: Session,
        first: _EncodedChunk,
        count: int,
        total_frames: int,
        sampled_fps: float,
    ):
        """The plan of a video of ``total_frames`` frames and ``count`` tokens, from its first
        encoded chunk."""
        chunk, embeddings, frames = first.chunk, first.embeddings, first.frames
        per_frame = embeddings.shape[0] / frames
        grid = adapter.planned_video_grid(chunk, total_frames)
        seconds = adapter.seconds_per_grid(sampled_fps)
        layout = Layout(
            [*session.layout.token_types, torch.full((count,), VIDEO_TYPE)],
            list(session.layout.image_grids),
            [*session.layout.video_grids, *([grid] if grid is not None else [])],
            [*session.layout.video_seconds, *([seconds] if seconds is not None else [])],
        )
        grid_h, grid_w = adapter.video_token_grid(chunk, embeddings.shape[0], frames)
        return cls(
            session.positions(layout),
            len(session.layout),
            per_frame,
            grid_h,
            grid_w,
            grid,
            seconds,
        )

    def take(self, n: int, frames_done: int) -> tuple[torch.Tensor, Any]:
        start = self.offset + self.used
        self.used += n
        frame = int(frames_done * self.tokens_per_frame) // max(self.grid_h * self.grid_w, 1)
        tags = video_tags(n, media=0, frame_offset=frame, grid_h=self.grid_h, grid_w=self.grid_w)
        return self.positions[..., start : start + n], tags

    def close(self, session: Session) -> None:
        """Record the video as streamed (a truncated file may bring fewer frames than planned)."""
        session.layout.token_types.append(torch.full((self.used,), VIDEO_TYPE))
        if self.grid is not None:
            grid = self.grid.clone()
            grid[0] = self.used * session.adapter.merge_area // int(grid[1] * grid[2])
            session.layout.video_grids.append(grid)
        if self.seconds is not None:
            session.layout.video_seconds.append(self.seconds)


def video_tags(count: int, media: int, frame_offset: int, grid_h: int, grid_w: int) -> TokenTags:
    """Tags of ``count`` video tokens laid out frame by frame on a grid_h x grid_w grid."""
    tags = TokenTags.text(1, count)
    tag_grid(tags, 0, 0, count, Modality.VIDEO, media, grid_w, grid_h, frame_offset)
    return tags
