"""The test-bed's visual world: a palette, four shapes, and painting them onto RGB canvases.

Every target sits on a grid of ``CELL``-pixel cells, the area one merged visual token covers
(14-pixel patches merged 2 x 2), so a target's shape is read from one token's pixels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

CELL = 28
TARGET = 24  # side of a shape drawn in a cell
BACKGROUND = 16

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 185, 60),
    "blue": (45, 95, 235),
    "yellow": (235, 215, 35),
    "purple": (160, 55, 210),
    "orange": (245, 140, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")


@lru_cache(maxsize=64)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """A boolean ``size x size`` mask of ``shape``, filling most of the square."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2
    if shape == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= (0.48 * size) ** 2
    if shape == "square":
        inset = 0.12 * size
        return (x >= inset) & (x <= size - inset) & (y >= inset) & (y <= size - inset)
    if shape == "triangle":
        top, bottom = 0.05 * size, 0.95 * size
        half_width = 0.5 * size * (y - top) / (bottom - top)
        return (y >= top) & (y <= bottom) & (np.abs(x - c) <= half_width)
    if shape == "cross":
        arm = 0.17 * size
        return ((np.abs(x - c) <= arm) | (np.abs(y - c) <= arm)) & (
            (x >= 0.04 * size) & (x <= 0.96 * size) & (y >= 0.04 * size) & (y <= 0.96 * size)
        )
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def blank(height: int, width: int) -> np.ndarray:
    """An empty dark canvas [height, width, 3] uint8."""
    return np.full((height, width, 3), BACKGROUND, dtype=np.uint8)


def paint(canvas: np.ndarray, shape: str, size: int, top: int, left: int, rgb) -> None:
    """Paint ``shape`` of side ``size`` with its top-left corner at (top, left), clipped."""
    mask = shape_mask(shape, size)
    h, w = canvas.shape[:2]
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + size, h), min(left + size, w)
    if t0 >= t1 or l0 >= l1:
        return
    region = mask[t0 - top : t1 - top, l0 - left : l1 - left]
    canvas[t0:t1, l0:l1][region] = np.asarray(rgb, dtype=np.uint8)


def jittered(rgb: tuple[int, int, int], rng: np.random.Generator, spread: int = 12):
    """A colour with a little noise, so no answer hinges on one exact RGB value."""
    noise = rng.integers(-spread, spread + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + noise, 0, 255))


def grey(rng: np.random.Generator) -> tuple[int, int, int]:
    """A distractor's colour: achromatic, so colour alone marks the target."""
    level = int(rng.integers(90, 200))
    return (level, level, level)


def paint_in_cell(
    canvas: np.ndarray, shape: str, rgb, row: int, col: int, clear: bool = False
) -> None:
    """Paint a shape centred in grid cell (row, col), over a cleared cell if ``clear``.

    Always the same size and place in its cell: a tiny vision tower then tells shapes apart in
    minutes, where sizes and offsets that vary kept it at chance.
    """
    if clear:
        canvas[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = BACKGROUND
    margin = (CELL - TARGET) // 2
    paint(canvas, shape, TARGET, row * CELL + margin, col * CELL + margin, rgb)
