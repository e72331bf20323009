"""Video needle with distractors that compete with it for the cache.

The plain video needle's haystack is grey shapes drifting over a dark background, so the needle
frame is the only one unlike the rest, and a policy that keeps what looks unusual often keeps it.
Here one frame in eight (never the needle's) also flashes a dim coloured shape in one cell: the
needle's palette at ``DIM`` of its intensity. To a heuristic those frames look as unusual as the
needle (on the LLaVA test-bed model their keys' norms are as small as a needle's); to the
question they are noise, since the needle stays the only bright shape. The questions are the
video needle's, and the test-bed models were trained on the plain needle only.
"""

from __future__ import annotations

import numpy as np

from ..draw import BACKGROUND, CELL, COLOURS, SHAPES, paint_in_cell
from . import video_needle
from .base import Sample, pick

EVERY = 8  # one distractor frame per this many frames
DIM = 0.55  # a distractor's colour: this far from the background towards the palette colour


def dimmed(rgb: tuple[int, int, int], fraction: float = DIM) -> tuple[int, int, int]:
    """``rgb`` moved from the background colour by ``fraction`` of the way."""
    return tuple(int(BACKGROUND + fraction * (v - BACKGROUND)) for v in rgb)


def distract(rng: np.random.Generator, video: np.ndarray, needle: int) -> dict[str, list[int]]:
    """Flash a dim coloured shape in one random cell of one frame in ``EVERY``, never the
    needle's; returns those frames' indices as metadata."""
    others = [t for t in range(len(video)) if t != needle]
    count = min(len(others), max(1, len(video) // EVERY))
    chosen = sorted(int(t) for t in rng.choice(others, size=count, replace=False))
    cells = video.shape[1] // CELL
    for t in chosen:
        row, col = divmod(int(rng.integers(cells**2)), cells)
        shape, colour = pick(rng, SHAPES), pick(rng, list(COLOURS))
        paint_in_cell(video[t], shape, dimmed(COLOURS[colour]), row, col, clear=True)
    return {"distractors": chosen}


def generate(
    rng: np.random.Generator, question: str, length: int | None = None, depth: float | None = None
) -> Sample:
    """The video needle (``length`` frames, default 32, the needle at ``depth``) with
    distractors."""
    return video_needle.generate(rng, question, length, depth, distract=distract)
