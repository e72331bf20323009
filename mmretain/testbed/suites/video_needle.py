"""Video needle (an offline analogue of V-NIAH): one frame at depth d shows a bright shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..draw import CELL, COLOURS, SHAPES, jittered, paint_in_cell
from .base import Sample, ask, pick, text, user
from .motion import FRAME, drifting_shapes

QUESTIONS = ("colour", "shape")
FRAMES = 32
PROMPTS = {
    "colour": "what colour was the bright shape ?",
    "shape": "which shape was bright ?",
}


def frame_at(depth: float, frames: int) -> int:
    """The frame index at relative depth ``depth`` in [0, 1]."""
    return round(depth * (frames - 1))


def flash(rng: np.random.Generator, frame: np.ndarray, colour: str, shape: str) -> None:
    """Paint a bright shape into one random cell of ``frame``, hiding whatever drifts there
    (grey shapes crossing the cell would blur its outline)."""
    cells = frame.shape[0] // CELL
    row, col = divmod(int(rng.integers(cells**2)), cells)
    paint_in_cell(frame, shape, jittered(COLOURS[colour], rng), row, col, clear=True)


def generate(
    rng: np.random.Generator,
    question: str,
    length: int | None = None,
    depth: float | None = None,
    distract: Callable[[np.random.Generator, np.ndarray, int], dict[str, Any]] | None = None,
) -> Sample:
    """``length`` frames (default 32); the needle sits at ``depth`` (default: uniform).

    ``distract(rng, video, needle_frame)``, when given, paints distractors into the haystack
    before the needle goes in and returns what to add to the sample's metadata."""
    frames = length or FRAMES
    depth = float(rng.uniform()) if depth is None else depth
    video = drifting_shapes(rng, frames, FRAME)
    colour, shape = pick(rng, list(COLOURS)), pick(rng, SHAPES)
    needle = frame_at(depth, frames)
    metadata = {"length": frames, "depth": depth}
    if distract is not None:
        metadata.update(distract(rng, video, needle))
    flash(rng, video[needle], colour, shape)
    prompt, answer, followups = ask(rng, PROMPTS, {"colour": colour, "shape": shape}, question)
    content = [{"type": "video", "video": video}, text(prompt)]
    return Sample([user(*content)], answer, metadata, followups)
