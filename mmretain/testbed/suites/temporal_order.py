"""Two-needle temporal order: two bright shapes flash in two frames; which colour came first."""

from __future__ import annotations

import numpy as np

from ...errors import SuiteArgumentError
from ..draw import COLOURS, SHAPES
from .base import Sample, pick, text, user
from .motion import FRAME, drifting_shapes
from .video_needle import FRAMES, flash, frame_at

QUESTIONS = ("first", "last")
PROMPTS = {
    "first": "which colour came first ?",
    "last": "which colour came last ?",
}
TEMPORAL_PATCH = 2  # frames the vision encoder fuses into one token; the needles never share one


def generate(
    rng: np.random.Generator, question: str, length: int | None = None, depth: float | None = None
) -> Sample:
    """``length`` frames (default 32, at least 4); ``depth`` places the earlier needle."""
    frames = length or FRAMES
    if frames < 2 * TEMPORAL_PATCH:
        raise SuiteArgumentError(f"temporal order needs at least {2 * TEMPORAL_PATCH} frames")
    slots = frames // TEMPORAL_PATCH
    if depth is None:
        first_slot, second_slot = sorted(rng.choice(slots, size=2, replace=False).tolist())
    else:
        first_slot = min(frame_at(depth, frames) // TEMPORAL_PATCH, slots - 2)
        second_slot = int(rng.integers(first_slot + 1, slots))
    first = first_slot * TEMPORAL_PATCH + int(rng.integers(TEMPORAL_PATCH))
    second = second_slot * TEMPORAL_PATCH + int(rng.integers(TEMPORAL_PATCH))
    video = drifting_shapes(rng, frames, FRAME)
    colours = rng.choice(list(COLOURS), size=2, replace=False).tolist()
    for frame, colour in zip((first, second), colours, strict=True):
        flash(rng, video[frame], colour, pick(rng, SHAPES))
    answer = colours[0] if question == "first" else colours[1]
    content = [{"type": "video", "video": video}, text(PROMPTS[question])]
    metadata = {"length": frames, "depth": first / (frames - 1), "depth2": second / (frames - 1)}
    # No follow-up: after "first" is answered, "last" is just the other colour, a shortcut
    # that took the signal away from the order itself.
    return Sample([user(*content)], answer, metadata)
