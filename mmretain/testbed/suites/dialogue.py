"""Multi-turn dialogue: a fact in turn 1 (said, or shown in an image), a distracting turn 2,
and a question about the fact in turn 3."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..draw import COLOURS
from .base import Sample, assistant, pick, text, user
from .image_needle import canvas_with_target

QUESTIONS = ("text-colour", "image-colour", "image-shape")
NOUNS = ("ball", "box", "cup", "hat", "key", "kite")
IMAGE_CELLS = 4  # a 112-pixel image: 16 visual tokens
PROMPTS = {
    "text-colour": "what colour was the {noun} ?",
    "image-colour": "what colour was the bright shape ?",
    "image-shape": "which shape was bright ?",
}


def generate(rng: np.random.Generator, question: str, length: int | None = None) -> Sample:
    """Three user turns; ``length`` is ignored (a dialogue always has three)."""
    noun, other = rng.choice(NOUNS, size=2, replace=False).tolist()
    colour, other_colour = pick(rng, list(COLOURS)), pick(rng, list(COLOURS))
    followups = []
    if question == "text-colour":
        first = user(text(f"remember : the {noun} is {colour} ."))
        answer = colour
    else:
        canvas, target = canvas_with_target(rng, IMAGE_CELLS, int(rng.integers(2, 6)))
        image = {"type": "image", "image": Image.fromarray(canvas)}
        first = user(image, text("remember the bright shape ."))
        answer = target["colour"] if question == "image-colour" else target["shape"]
        other_question = "image-shape" if question == "image-colour" else "image-colour"
        followups = [(PROMPTS[other_question], target[other_question.removeprefix("image-")])]
    messages = [
        first,
        assistant("ok"),
        user(text(f"the {other} is {other_colour} . what colour is the {other} ?")),
        assistant(other_colour),
        user(text(PROMPTS[question].format(noun=noun))),
    ]
    return Sample(messages, answer, {"length": 3}, followups)
