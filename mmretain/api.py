"""`load()` and `RetainedVLM`: chat and long-video QA under one KV budget."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from . import media
from .cache import RetentionStats
from .config import RetentionConfig
from .engine import RetentionRun
from .errors import ModelLoadError
from .session import VIDEO_TYPE, Layout, Session, video_tags

Messages = list[dict[str, Any]]


@dataclass
class Answer:
    """A reply and what the cache held while producing it."""

    text: str
    stats: RetentionStats
    question: str = ""
    tokens: list[int] = field(default_factory=list)
    seconds: float = 0.0
    frames: int = 0


@dataclass
class VideoProgress:
    """Reported after each chunk of a streamed video."""

    frames_done: int
    frames_total: int
    tokens_seen: int
    entries_kept: int
    entries_budget: int


class RetainedVLM:
    """A model, its processor and a retention config: chat and video QA under one KV budget."""

    def __init__(self, model: torch.nn.Module, processor: Any, config: RetentionConfig):
        self.model = model.eval()
        self.processor = processor
        self.config = config
        self.run = RetentionRun(model, config)
        self._chat: Session | None = None
        self._chat_ids: list[int] = []
        self._chat_images = 0

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @contextmanager
    def _hooked(self):
        """Hooks live only while the library runs the model: a user's own calls see it as is."""
        self.run.install()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.run.remove()

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return set(ids)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    # -- chat ----------------------------------------------------------------------------------
    def chat(self, messages: Messages, max_new_tokens: int = 128) -> Answer:
        """Reply to the conversation ``messages``; the cache carries over from the last call.

        Each call passes the whole conversation, as with any chat API. When it extends the
        previous one, only the new tokens are prefilled; otherwise the session restarts.
        """
        start = time.perf_counter()
        images = [media.load_image(c["image"]) for c in _contents(messages, "image")]
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        full = self.processor(text=[text], images=images or None, return_tensors="pt")
        ids = full["input_ids"][0].tolist()
        cached = len(self._chat_ids)
        if self._chat is None or ids[:cached] != self._chat_ids or len(images) < self._chat_images:
            self._chat, self._chat_ids, self._chat_images, cached = Session(self.run), [], 0, 0
        new_ids = torch.tensor([ids[cached:]])
        inputs: dict[str, Any] = {"input_ids": new_ids}
        if "mm_token_type_ids" in full:
            inputs["mm_token_type_ids"] = full["mm_token_type_ids"][:, cached:]
        new_images = images[self._chat_images :]
        if new_images:
            inputs.update(self.processor.image_processor(images=new_images, return_tensors="pt"))
        session = self._chat
        with self._hooked():
            logits = session.extend(inputs)
            tokens = session.generate(logits, max_new_tokens, self._eos_ids())
        self._chat_ids = ids + tokens[:-1]
        self._chat_images = len(images)
        return Answer(
            self._decode(tokens),
            session.cache.stats,
            tokens=tokens,
            seconds=time.perf_counter() - start,
        )

    def reset(self) -> None:
        """Forget the conversation."""
        self._chat, self._chat_ids, self._chat_images = None, [], 0

    # -- long video ----------------------------------------------------------------------------
    def answer_video(
        self,
        path: str | Path | media.Video,
        questions: str | Sequence[str],
        *,
        fps: float | None = 1.0,
        max_frames: int | None = None,
        chunk_frames: int = 16,
        start: float | None = None,
        end: float | None = None,
        question_first: bool = False,
        max_new_tokens: int = 64,
        progress: Callable[[VideoProgress], None] | None = None,
    ) -> list[Answer]:
        """Stream a video through the model chunk by chunk, evicting after each, then answer.

        ``path`` may be an opened `media.Video`, whose own sampling then applies.

        With the question after the video (default), the cache is compressed before any
        question is known and every question is answered from the same compressed context
        (compress once, answer many). With ``question_first=True`` the question comes before
        the video, so eviction can favour what it asks about; the video streams once per
        question.
        """
        if isinstance(questions, str):
            questions = [questions]
        if not questions:
            raise ValueError("give at least one question about the video")
        video = (
            path
            if isinstance(path, media.Video)
            else media.Video(path, fps=fps, max_frames=max_frames, start=start, end=end)
        )
        if question_first:
            return [
                answer
                for q in questions
                for answer in self._stream_and_answer(
                    video, [q], chunk_frames, True, max_new_tokens, progress
                )
            ]
        return self._stream_and_answer(
            video, questions, chunk_frames, False, max_new_tokens, progress
        )

    def _video_prompt(self, question: str, question_first: bool) -> tuple[list[int], list[int]]:
        """Token ids before and after the video's placeholder in the chat-formatted prompt."""
        parts = [{"type": "video"}, {"type": "text", "text": question}]
        messages = [{"role": "user", "content": parts[::-1] if question_first else parts}]
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        video_token = self.run.adapter.video_token_id
        if ids.count(video_token) != 1:
            raise ModelLoadError(
                "the processor's chat template does not render exactly one video placeholder; "
                "use a video-capable model and processor"
            )
        cut = ids.index(video_token)
        return ids[:cut], ids[cut + 1 :]

    def _encoded_chunks(
        self, video: media.Video, chunk_frames: int, total: int
    ) -> Iterator[_EncodedChunk]:
        """Each chunk of ``video`` as the model takes it: a prompt (Qwen3-VL) or embeddings."""
        adapter = self.run.adapter
        done = 0
        for frames in video.chunks(chunk_frames):
            indices = video.indices[done : done + len(frames)]
            done += len(frames)
            prompt = adapter.video_chunk_prompt(
                self.processor, frames, indices, video.info.fps, total
            )
            if prompt is not None:
                yield _EncodedChunk(len(frames), prompt=prompt)
            else:
                chunk = adapter.process_video_chunk(self.processor, frames)
                embeddings = adapter.video_chunk_embeddings(chunk)
                yield _EncodedChunk(len(frames), chunk=chunk, embeddings=embeddings)

    def _video_progress(self, session: Session, done: int, total: int) -> VideoProgress:
        stats = session.cache.stats
        budget = self.run.capacity(session.cache) if session.cache.initialized_layers else 0
        return VideoProgress(done, total, stats.tokens_seen, stats.entries_kept, budget)

    def _stream_and_answer(
        self,
        video: media.Video,
        questions: Sequence[str],
        chunk_frames: int,
        question_first: bool,
        max_new_tokens: int,
        progress: Callable[[VideoProgress], None] | None,
    ) -> list[Answer]:
        start = time.perf_counter()
        adapter = self.run.adapter
        prompts = [self._video_prompt(q, question_first) for q in questions]
        prefix = prompts[0][0]
        session = Session(self.run)
        total = len(video.indices)
        chunk_frames = adapter.round_chunk_frames(chunk_frames)
        with self._hooked():
            encoded = self._encoded_chunks(video, chunk_frames, total)
            first = next(encoded, None)
            # The video's length is known from its first chunk: a fraction budget is taken of
            # the text before it and all of the video from the start (each question's own
            # tokens join when it is asked).
            video_tokens = 0 if first is None else _video_tokens(adapter, first, total)
            session.cache.expect(len(prefix) + video_tokens)
            session.extend({"input_ids": torch.tensor([prefix])})
            # The video is one turn's content: text a chunk brings (Qwen3-VL's timestamps)
            # must not take the protection from the prompt around it.
            with session.cache.media_stream():
                plan: _VideoPlan | None = None
                done = 0
                for item in itertools.chain([] if first is None else [first], encoded):
                    if item.prompt is not None:
                        session.extend(item.prompt)
                    else:
                        if plan is None:
                            plan = _VideoPlan.make(
                                adapter, session, item, video_tokens, total, video.sampled_fps
                            )
                        positions, tags = plan.take(item.embeddings.shape[0], done)
                        session.extend_embeddings(item.embeddings[None], positions, tags)
                    done += item.frames
                    if progress is not None:
                        progress(self._video_progress(session, done, total))
                # Chunks that went in as prompt tokens kept the session's layout themselves.
                if plan is not None:
                    tail = adapter.video_tail_embeddings()
                    if tail.shape[0]:
                        positions, tags = plan.take(tail.shape[0], done)
                        session.extend_embeddings(tail[None].to(self.model.dtype), positions, tags)
                    plan.close(session)
                # A file cut short (or Qwen3-VL's estimate from its first chunk) leaves the
                # video another length than expected: the budget follows what was streamed.
                session.cache.prompt_tokens = session.cache.get_seq_length()
                self.run.maybe_evict(session.cache, decoding=False)
            context = session.snapshot()
            answers = []
            for question, (_, suffix) in zip(questions, prompts, strict=True):
                asking = context.snapshot()
                logits = asking.extend({"input_ids": torch.tensor([suffix])})
                tokens = asking.generate(logits, max_new_tokens, self._eos_ids())
                answers.append(
                    Answer(
                        self._decode(tokens),
                        asking.cache.stats,
                        question,
                        tokens,
                        time.perf_counter() - start,
                        done,
                    )
                )
        return answers


@dataclass
class _EncodedChunk:
    """One chunk of a streamed video, ready for the model: a prompt, or a chunk's embeddings."""

    frames: int
    prompt: dict[str, torch.Tensor] | None = None
    chunk: Any = None
    embeddings: torch.Tensor | None = None


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


def _contents(messages: Messages, kind: str) -> list[dict[str, Any]]:
    return [
        part
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == kind
    ]


def load(
    path_or_hub_id: str | Path,
    policy: Any = "snapkv",
    budget: int | float | str = 0.25,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    **options: Any,
) -> RetainedVLM:
    """Load a checkpoint (local directory or hub id) with its processor, under a KV budget.

    "testbed" and "testbed-llava" name the tiny models shipped with mmretain (offline).

    ``options`` are further `RetentionConfig` fields (allocation, sink, recent, chunk_tokens, ...).
    """
    config = RetentionConfig(policy=policy, budget=budget, **options)
    path = str(path_or_hub_id)
    if path.startswith("testbed") and not Path(path).exists():
        from .testbed import model_path  # the shipped test-bed checkpoints, by name

        path = str(model_path(path))
    local = Path(path).is_dir()
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if local:
        kwargs["local_files_only"] = True
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        processor = AutoProcessor.from_pretrained(
            path, **({"local_files_only": True} if local else {})
        )
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        except ValueError:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(
            f"cannot load a model from {path!r} ({reason}); "
            "give a local directory written by save_pretrained (safetensors) or a reachable hub id"
        ) from error
    return RetainedVLM(model.to(device), processor, config)
