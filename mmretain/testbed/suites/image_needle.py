"""Image needle VQA: one bright shape among grey ones; ask its colour, shape or position."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..draw import CELL, COLOURS, SHAPES, blank, grey, jittered, paint_in_cell
from .base import Sample, ask, pick, text, user

QUESTIONS = ("colour", "shape", "position")
CELLS = 16  # a 448-pixel canvas: 16 x 16 merged visual tokens
# Position is asked as top or bottom only. Qwen2-VL's M-RoPE gives columns its lowest rotary
# frequencies: at this model's head size, columns 16 apart differ by 0.05 radians, and "left or
# right" stayed at chance.
PROMPTS = {
    "colour": "what colour is the bright shape ?",
    "shape": "which shape is bright ?",
    "position": "is the bright shape at the top or the bottom ?",
}


def canvas_with_target(
    rng: np.random.Generator, cells: int, distractors: int, margin: int = 0
) -> tuple[np.ndarray, dict]:
    """A ``cells x cells`` grid of grey shapes plus one bright target, each in its own cell.

    ``margin`` keeps the target out of the central rows, so "top or bottom" always has a clear
    answer.
    """
    half = cells // 2
    allowed = [(r, c) for r in range(cells) for c in range(cells) if abs(r + 0.5 - half) > margin]
    row, col = allowed[int(rng.integers(len(allowed)))]
    others = [i for i in range(cells * cells) if i != row * cells + col]
    canvas = blank(cells * CELL, cells * CELL)
    for i in rng.choice(others, size=distractors, replace=False):
        paint_in_cell(canvas, pick(rng, SHAPES), grey(rng), int(i) // cells, int(i) % cells)
    colour, shape = pick(rng, list(COLOURS)), pick(rng, SHAPES)
    paint_in_cell(canvas, shape, jittered(COLOURS[colour], rng), row, col)
    target = {
        "colour": colour,
        "shape": shape,
        "position": "top" if row < half else "bottom",
        "row": row,
        "col": col,
    }
    return canvas, target


def generate(rng: np.random.Generator, question: str, length: int | None = None) -> Sample:
    """``length`` is the canvas side in cells (default 16, i.e. 256 visual tokens)."""
    cells = length or CELLS
    distractors = int(rng.integers(cells * cells // 8, cells * cells // 4))
    canvas, target = canvas_with_target(rng, cells, distractors, margin=1)
    prompt, answer, followups = ask(rng, PROMPTS, target, question)
    content = [{"type": "image", "image": Image.fromarray(canvas)}, text(prompt)]
    metadata = {"length": cells, "row": target["row"], "col": target["col"]}
    return Sample([user(*content)], answer, metadata, followups)
