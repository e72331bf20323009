"""Frames of grey shapes drifting and bouncing: the haystack of the video suites."""

from __future__ import annotations

import numpy as np

from ..draw import SHAPES, blank, grey, paint
from .base import pick

FRAME = 56  # 2 x 2 merged visual tokens per frame pair


def drifting_shapes(rng: np.random.Generator, frames: int, side: int = FRAME) -> np.ndarray:
    """``frames`` frames [T, side, side, 3] of 1 to 3 grey shapes moving in straight lines."""
    video = np.stack([blank(side, side)] * frames)
    for _ in range(int(rng.integers(1, 4))):
        size = int(rng.integers(12, 21))
        shape, rgb = pick(rng, SHAPES), grey(rng)
        position = rng.uniform(0, side - size, size=2)
        velocity = rng.uniform(0.5, 2.5, size=2) * rng.choice([-1, 1], size=2)
        for t in range(frames):
            paint(video[t], shape, size, int(position[0]), int(position[1]), rgb)
            position += velocity
            for axis in range(2):  # bounce off the walls
                if not 0 <= position[axis] <= side - size:
                    velocity[axis] = -velocity[axis]
                    position[axis] = np.clip(position[axis], 0, side - size)
    return video
