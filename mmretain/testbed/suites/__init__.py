"""The procedural suites: a registry by name, and one function that makes any sample."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ...errors import SuiteArgumentError
from . import dialogue, facts, image_needle, video_distractors, video_needle
from .base import Sample, sample_rng

LENGTH_FACTORS = (1, 4, 8)  # video suites: the training length and beyond it


@dataclass(frozen=True)
class Suite:
    """A family of samples: its question types, its generator and the length it trains at.

    ``length`` means frames for the video suites and is fixed for the others. ``eval_factors``
    are the multiples of ``train_length`` a video suite is evaluated at.
    """

    name: str
    questions: tuple[str, ...]
    generate: Callable[..., Sample]
    train_length: int
    is_video: bool = False
    eval_factors: tuple[int, ...] = LENGTH_FACTORS

    @property
    def eval_lengths(self) -> list[int]:
        """The lengths it is evaluated at: a video suite's at each of its factors."""
        if not self.is_video:
            return [self.train_length]
        return [self.train_length * factor for factor in self.eval_factors]


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("image-needle", image_needle.QUESTIONS, image_needle.generate, image_needle.CELLS),
        Suite(
            "video-needle", video_needle.QUESTIONS, video_needle.generate, video_needle.FRAMES, True
        ),
        # Evaluated at 128 and 256 frames only: the long videos it was made to separate policies on.
        Suite(
            "video-needle-distractors",
            video_needle.QUESTIONS,
            video_distractors.generate,
            video_needle.FRAMES,
            True,
            eval_factors=(4, 8),
        ),
        Suite("dialogue", dialogue.QUESTIONS, dialogue.generate, 3),
        Suite("image-chat", facts.QUESTIONS, facts.generate_chat, 4),
        Suite("text-and-image", facts.QUESTIONS, facts.generate_passage, 1),
    )
}


def make_sample(
    suite: str,
    index: int,
    *,
    split: str = "train",
    seed: int = 0,
    question: str | None = None,
    length: int | None = None,
    depth: float | None = None,
) -> Sample:
    """Sample ``index`` of ``suite``; the same arguments always give the same sample.

    ``question`` defaults to one drawn at random; ``length`` to the training length; ``depth``
    (video suites only) to a uniform draw.
    """
    if suite not in SUITES:
        raise SuiteArgumentError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    spec = SUITES[suite]
    if question is not None and question not in spec.questions:
        raise SuiteArgumentError(f"{suite} asks {', '.join(spec.questions)}, not {question!r}")
    if length is not None and length < 1:
        unit = "frames" if spec.is_video else "cells"
        raise SuiteArgumentError(f"a sample needs at least 1 of its {unit}; got {length}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise SuiteArgumentError(f"depth is a fraction of the video, in [0, 1]; got {depth}")
    rng = sample_rng(suite, split, index, seed)
    question = question or spec.questions[int(rng.integers(len(spec.questions)))]
    kwargs = {"depth": depth} if spec.is_video else {}
    sample = spec.generate(rng, question, spec.train_length if length is None else length, **kwargs)
    sample.metadata = {
        "suite": suite,
        "question": question,
        "split": split,
        "index": index,
        "seed": seed,
        **sample.metadata,
    }
    return sample


def samples(suite: str, count: int, start: int = 0, **kwargs) -> Iterator[Sample]:
    """``count`` consecutive samples of ``suite`` from index ``start`` (same keyword arguments
    as ``make_sample``)."""
    for index in range(start, start + count):
        yield make_sample(suite, index, **kwargs)


__all__ = ["SUITES", "Sample", "Suite", "make_sample", "samples"]
