"""`load()` and `RetainedVLM`: chat and long-video QA under one KV budget."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, GenerationConfig

from . import media
from .adapters.base import changed_span
from .cache import RetentionStats
from .config import RetentionConfig
from .defaults import AUTO, DEFAULT_BUDGET
from .engine import RetentionRun
from .errors import (
    ConfigError,
    ConversationRestartWarning,
    FrameSamplingError,
)
from .location import checkpoint_location, load_errors, load_model
from .session import Session
from .streaming import VideoProgress, stream_video

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
    logits: tuple[torch.Tensor, ...] | None = None  # per step, when the config asks for them


@dataclass
class _Turn:
    """One chat call: the conversation it was given, that conversation's tokens as the chat
    template renders it, and the reply's tokens and text."""

    messages: Messages
    ids: list[int]
    tokens: list[int]
    text: str


class RetainedVLM:
    """A model, its processor and a retention config: chat and video QA under one KV budget.

    A thin façade over the engine: each call installs the run's hooks, works on a `Session`
    (`mmretain.session`), streams video with `mmretain.streaming.stream_video`, answers with
    the model's own ``generate`` and removes the hooks again.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, config: RetentionConfig):
        self.model = model.eval()
        self.processor = processor
        self.run = RetentionRun(model, config)
        self.config = self.run.config  # "auto" resolved: the policy that really runs
        self._chat: Session | None = None
        self._chat_images = 0
        self._turn: _Turn | None = None  # the latest chat call and its reply
        self._scorer = None  # the open_clip relevance scorer, loaded on first use

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def describe(self) -> str:
        """What runs, in one line: "policy global, KV budget 0.25 of the prompt (25%)"."""
        return f"policy {self.run.policy.name}, KV budget {self.config.parsed_budget}"

    @contextmanager
    def _hooked(self):
        """Hooks live only while the library runs the model: a user's own calls see it as is."""
        self.run.install()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.run.remove()

    def generation_config(
        self, config: GenerationConfig | None = None, max_new_tokens: int = 128
    ) -> GenerationConfig:
        """``config`` (default: greedy, ``max_new_tokens``) with the end-of-sequence and padding
        tokens filled in from the model and its tokenizer where it names none."""
        config = copy.deepcopy(config) or GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False
        )
        if (config.num_beams or 1) > 1 or (config.num_return_sequences or 1) > 1:
            # A session's cache holds one sequence; beams would need one branch each.
            raise ConfigError(
                f"one reply per call is supported (num_beams={config.num_beams}, "
                f"num_return_sequences={config.num_return_sequences}); set both to 1, or "
                "sample several replies one call at a time"
            )
        if config.eos_token_id is None:
            ids = self.model.generation_config.eos_token_id
            ids = [ids] if isinstance(ids, int) else list(ids or [])
            if self.tokenizer.eos_token_id is not None:
                ids.append(self.tokenizer.eos_token_id)
            config.eos_token_id = sorted(set(ids)) or None
        if config.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            config.pad_token_id = pad if pad is not None else _first(config.eos_token_id)
        return config

    def _answer(
        self,
        session: Session,
        inputs: dict[str, torch.Tensor],
        config: GenerationConfig,
        span: tuple[int, int],
        **fields: Any,
    ) -> Answer:
        """Generate on ``session`` with ``span`` of ``inputs`` protected as the question."""
        reply = session.generate(inputs, config, span)
        return Answer(
            reply.text, session.cache.stats, tokens=reply.tokens, logits=reply.logits, **fields
        )

    # -- chat ----------------------------------------------------------------------------------
    def chat(
        self,
        messages: Messages,
        max_new_tokens: int = 128,
        generation_config: GenerationConfig | None = None,
    ) -> Answer:
        """Reply to the conversation ``messages``; the cache carries over from the last call.

        Each call passes the whole conversation, as with any chat API, earlier replies as the
        model gave them (`Answer.text`). When it extends the previous one, only the new tokens
        are prefilled and the cache carries over, the reply as the model generated it. Otherwise
        the whole conversation is prefilled again, with a `ConversationRestartWarning`, and
        ``stats.restarts`` counts it; call `reset` first to start a new conversation.
        ``generation_config`` (sampling, stop strings, ...) replaces the default of greedy
        decoding up to ``max_new_tokens``.
        """
        start = time.perf_counter()
        images = [media.load_image(c["image"]) for c in _contents(messages, "image")]
        for image, part in zip(images, _contents(messages, "image"), strict=True):
            self.run.adapter.check_frame_size(image.width, image.height, part["image"])

        def render(conversation: Messages, reply_next: bool = True) -> dict[str, torch.Tensor]:
            shown = images[: len(_contents(conversation, "image"))]
            return self.run.adapter.chat_inputs(
                self.processor, conversation, shown, reply_next=reply_next
            )

        full = render(messages)
        ids = full["input_ids"][0].tolist()
        # The latest user message's text is the question: where it lies shows against the
        # same conversation with that text left out.
        blank = render(_without_last_question(messages))["input_ids"][0].tolist()
        question = changed_span(ids, blank)
        config = self.generation_config(generation_config, max_new_tokens)
        session = self._chat
        continuation = None
        if session is not None:
            continuation = self._continuation(messages, ids, len(images), render, config)
        if continuation is None:
            fresh = Session(self.run, self.tokenizer)
            if session is not None:
                fresh.cache.replaces(session.cache)
            session, self._chat_images, continuation = fresh, 0, (0, [])
        resume, lead = continuation  # the new tokens: ``lead``, then ids[resume:]
        inputs: dict[str, Any] = {"input_ids": torch.tensor([lead + ids[resume:]])}
        if "mm_token_type_ids" in full:
            types = full["mm_token_type_ids"][:, resume:]
            inputs["mm_token_type_ids"] = torch.cat([types.new_zeros(1, len(lead)), types], 1)
        new_images = images[self._chat_images :]
        if new_images:
            inputs.update(self.processor.image_processor(images=new_images, return_tensors="pt"))
        shift = len(lead) - resume
        span = (max(question[0] + shift, 0), max(question[1] + shift, 0))
        with self._hooked():
            answer = self._answer(session, inputs, config, span)
        self._chat, self._chat_images = session, len(images)
        self._turn = _Turn(list(messages), ids, answer.tokens, answer.text)
        answer.seconds = time.perf_counter() - start
        return answer

    def _continuation(
        self,
        messages: Messages,
        ids: list[int],
        images: int,
        render: Callable[..., dict[str, torch.Tensor]],
        config: GenerationConfig,
    ) -> tuple[int, list[int]] | None:
        """How the conversation ``ids`` goes on from what the chat session holds: prefill
        ``lead`` then ``ids[resume:]``, as ``(resume, lead)``; None, with a
        `ConversationRestartWarning`, when it does not go on from it."""
        held, turn = self._chat.ids, self._turn
        if images < self._chat_images:
            return self._restart("an image was taken out")
        if ids[: len(held)] == held:
            return len(held), []
        # The reply passed back as text may tokenize otherwise than the model generated it
        # (special tokens, another split of the same words): the cache keeps the reply as
        # generated and goes on after the tokens that close the assistant's turn.
        n = len(turn.messages)
        if (
            len(messages) > n + 1
            and messages[:n] == turn.messages
            and messages[n].get("role") == "assistant"
            and _text_of(messages[n]) == turn.text
        ):
            with_reply = render(messages[: n + 1], False)["input_ids"][0].tolist()
            emptied = {**messages[n], "content": ""}
            without = render([*messages[:n], emptied], False)["input_ids"][0].tolist()
            reply_start, reply_end = changed_span(with_reply, without)
            if (
                with_reply[: len(turn.ids)] == turn.ids
                and reply_start >= len(turn.ids)
                and ids[: len(with_reply)] == with_reply
            ):
                closing = with_reply[reply_end:]
                ends = config.eos_token_id
                ends = {ends} if isinstance(ends, int) else set(ends or [])
                # generate does not feed its last token back; an end token the closing brings.
                last = [t for t in turn.tokens[-1:] if t not in ends]
                return len(with_reply), last + closing
        differs = next(
            (i for i, (a, b) in enumerate(zip(ids, held, strict=False)) if a != b),
            min(len(ids), len(held)),
        )
        return self._restart(
            f"they differ from token {differs} of {len(held)} cached: an earlier message "
            "changed, or a reply differs from the one the model gave"
        )

    @staticmethod
    def _restart(why: str) -> None:
        warnings.warn(
            f"this conversation does not extend the cached one ({why}), so it is prefilled "
            "again whole; pass earlier replies back as the model gave them (Answer.text), or "
            "call reset() before a new conversation",
            ConversationRestartWarning,
            stacklevel=4,
        )

    def reset(self) -> None:
        """Forget the conversation."""
        self._chat, self._chat_images, self._turn = None, 0, None

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
        generation_config: GenerationConfig | None = None,
        progress: Callable[[VideoProgress], None] | None = None,
    ) -> list[Answer]:
        """Stream a video through the model chunk by chunk, evicting after each, then answer.

        ``path`` may be an opened `media.Video`, whose own sampling then applies.

        With the question after the video (default), the cache is compressed before any
        question is known and every question is answered from the same compressed context
        (compress once, answer many). With ``question_first=True`` the question comes before
        the video, so eviction can favour what it asks about; the video streams once per
        question. ``generation_config`` replaces the default of greedy decoding up to
        ``max_new_tokens``.

        With ``relevance`` in the config (`mmretain.relevance.Relevance`), an open_clip model
        first scores every frame against each question, reading the video in chunks; then only
        the chunks it retrieves stream (``retrieve``), and video entries rank with the
        relevance prior (``prior``). The video then streams once per question.
        """
        if isinstance(questions, str):
            questions = [questions]
        if not questions:
            raise ValueError("give at least one question about the video")
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise FrameSamplingError(
                f"chunk_frames must be a whole number of frames >= 1, got {chunk_frames!r}"
            )
        video = (
            path
            if isinstance(path, media.Video)
            else media.Video(path, fps=fps, max_frames=max_frames, start=start, end=end)
        )
        config = self.generation_config(generation_config, max_new_tokens)
        if self.config.relevance is not None:
            return [
                answer
                for q in questions
                for answer in self._relevant_answer(
                    video, q, chunk_frames, question_first, config, progress
                )
            ]
        if question_first:
            return [
                answer
                for q in questions
                for answer in self._stream_and_answer(
                    video, [q], chunk_frames, True, config, progress
                )
            ]
        return self._stream_and_answer(video, questions, chunk_frames, False, config, progress)

    def _relevant_answer(
        self,
        video: media.Video,
        question: str,
        chunk_frames: int,
        question_first: bool,
        config: GenerationConfig,
        progress: Callable[[VideoProgress], None] | None,
    ) -> list[Answer]:
        """Score the frames against ``question``, stream the retrieved ones with the prior
        laid on them, and answer."""
        from .relevance import RelevanceScorer, normalized, retrieved_video, select_frames

        start = time.perf_counter()
        relevance = self.config.relevance
        if self._scorer is None:
            self._scorer = RelevanceScorer(relevance, device=self.model.device)
        scores = self._scorer.score_video(video, question)
        if relevance.retrieve:
            frames = select_frames(
                scores, chunk_frames, relevance.retrieve, relevance.context_frames
            )
            video, scores = retrieved_video(video, frames), scores[frames]
        answers = self._stream_and_answer(
            video,
            [question],
            chunk_frames,
            question_first,
            config,
            progress,
            frame_relevance=normalized(scores) if relevance.prior else None,
        )
        for answer in answers:
            answer.seconds = time.perf_counter() - start  # the CLIP pass included
        return answers

    def _stream_and_answer(
        self,
        video: media.Video,
        questions: Sequence[str],
        chunk_frames: int,
        question_first: bool,
        config: GenerationConfig,
        progress: Callable[[VideoProgress], None] | None,
        frame_relevance: torch.Tensor | None = None,
    ) -> list[Answer]:
        """Stream ``video`` once and answer every question from a copy of it; with
        ``frame_relevance`` (per frame, in [0, 1]) each chunk's entries are marked with it on
        the cache, for a relevance prior."""
        start = time.perf_counter()
        prompts = [
            self.run.adapter.video_prompt(self.processor, q, question_first=question_first)
            for q in questions
        ]
        context = Session(self.run, self.tokenizer)
        on_chunk = None
        if frame_relevance is not None:
            from .relevance import marking

            on_chunk = marking(context.cache, frame_relevance)
        with self._hooked():
            frames = stream_video(
                context,
                self.processor,
                video,
                prompts[0].prefix,
                question=prompts[0].question if question_first else None,
                chunk_frames=chunk_frames,
                progress=progress,
                on_chunk=on_chunk,
            )
            answers = []
            for question, prompt in zip(questions, prompts, strict=True):
                answer = self._answer(
                    context.snapshot(),
                    {"input_ids": torch.tensor([prompt.suffix], dtype=torch.long)},
                    config,
                    (0, 0) if question_first else prompt.question,
                    question=question,
                    frames=frames,
                )
                answer.seconds = time.perf_counter() - start
                answers.append(answer)
        return answers


def _without_last_question(messages: Messages) -> Messages:
    """``messages`` with the text of the latest user message emptied."""
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = ""
            elif isinstance(content, list):
                message["content"] = [
                    {**part, "text": ""} if part.get("type") == "text" else part for part in content
                ]
            break
    return out


def _text_of(message: dict[str, Any]) -> str:
    """The text of a message, its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def _first(ids: int | list[int] | None) -> int | None:
    return ids[0] if isinstance(ids, list) and ids else ids if isinstance(ids, int) else None


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
    policy: Any = AUTO,
    budget: int | float | str = DEFAULT_BUDGET,
    *,
    device_map: str | dict[str, Any] | None = None,
    dtype: torch.dtype | str = "auto",
    **options: Any,
) -> RetainedVLM:
    """Load a checkpoint (local directory or hub id) with its processor, under a KV budget.

    "testbed" and "testbed-llava" name the tiny models shipped with mmretain (offline).

    ``device_map`` and ``dtype`` are those of transformers' ``from_pretrained``: by default the
    model goes whole to the first GPU when there is one, else to the CPU, in the dtype its
    checkpoint was saved in; ``device_map="auto"`` spreads it over several devices (accelerate).
    ``options`` are further `RetentionConfig` fields (allocation, sink, recent, chunk_tokens, ...).
    """
    config = RetentionConfig(policy=policy, budget=budget, **options)
    path, local = checkpoint_location(path_or_hub_id)
    with load_errors(path):
        processor = AutoProcessor.from_pretrained(
            path, **({"local_files_only": True} if local else {})
        )
    if device_map is None:
        device_map = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = load_model(path, device_map=device_map, dtype=dtype)
    return RetainedVLM(model, processor, config)
