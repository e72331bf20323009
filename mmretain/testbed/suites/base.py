"""A test-bed sample and the seeding that makes every sample reproducible."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import SuiteArgumentError

SPLITS: dict[str, int] = {"train": 0, "eval": 1}


def sample_rng(suite: str, split: str, index: int, seed: int) -> np.random.Generator:
    """The random stream of one sample.

    The split is part of the seed, so training and held-out samples never share a stream
    whatever the index or seed.
    """
    if split not in SPLITS:
        raise SuiteArgumentError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return np.random.default_rng([SPLITS[split], zlib.crc32(suite.encode()), index, seed])


@dataclass
class Sample:
    """One question with its context, media inline in chat format, and a one-word answer.

    ``messages`` follow the chat format of transformers processors: each content part is
    ``{"type": "text", "text": ...}``, ``{"type": "image", "image": PIL.Image}`` or
    ``{"type": "video", "video": uint8 array [frames, height, width, 3]}``. The last message is
    the user's question; ``answer`` is the assistant's reply, a single word. ``followups`` are
    the other questions the suite can ask about the same context, as (question, answer) pairs:
    training asks them too, so one pass over costly media teaches every question type.
    """

    messages: list[dict[str, Any]]
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)
    followups: list[tuple[str, str]] = field(default_factory=list)

    @property
    def question(self) -> str:
        """The text of the last user message: what ``answer`` answers."""
        content = self.messages[-1]["content"]
        return content if isinstance(content, str) else content[-1]["text"]

    @property
    def questions(self) -> list[tuple[str, str]]:
        """Every (question, answer) pair about this context: the question, then the followups."""
        return [(self.question, self.answer), *self.followups]

    @property
    def media(self) -> list[Any]:
        """Images and videos in the order they appear."""
        return [part[part["type"]] for part in self._parts() if part["type"] in ("image", "video")]

    @property
    def images(self) -> list[Any]:
        return [part["image"] for part in self._parts() if part["type"] == "image"]

    @property
    def videos(self) -> list[np.ndarray]:
        return [part["video"] for part in self._parts() if part["type"] == "video"]

    def conversation(self, followups: bool = False) -> list[dict[str, Any]]:
        """The messages and the answer as the assistant's turn, then (optionally) the follow-up
        questions with their answers: a training target."""
        turns = [*self.messages, assistant(self.answer)]
        for question, answer in self.followups if followups else ():
            turns += [user(text(question)), assistant(answer)]
        return turns

    def _parts(self):
        for message in self.messages:
            content = message["content"]
            if not isinstance(content, str):
                yield from content


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def ask(
    rng: np.random.Generator, prompts: dict[str, str], answers: dict[str, str], asked: str
) -> tuple[str, str, list[tuple[str, str]]]:
    """The asked question and its answer, and the other questions, shuffled, as follow-ups."""
    others = [k for k in prompts if k != asked]
    followups = [(prompts[k], answers[k]) for k in rng.permutation(others).tolist()]
    return prompts[asked], answers[asked], followups


def pick(rng: np.random.Generator, options):
    """One element of a sequence, drawn from ``rng``."""
    return options[int(rng.integers(len(options)))]
