"""Several facts at once, in the words the dialogue suite speaks: a long passage of told
colours beside an image (``text-and-image``), or facts and an image spread over turns of a
chat (``image-chat``). Either way one question asks about one of them, so what a budget keeps
must cover every fact and both modalities: the ranking chooses between them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..draw import COLOURS
from .base import Sample, assistant, pick, text, user
from .dialogue import NOUNS, PROMPTS
from .image_needle import canvas_with_target

QUESTIONS = ("text-colour", "image-colour", "image-shape")
PASSAGE_IMAGE_CELLS = 8  # 64 visual tokens beside a passage of 4-6 facts
CHAT_IMAGE_CELLS = 4  # the dialogue suite's image size
PASSAGE_FACTS = (4, 6)  # inclusive range of told colours in a passage
CHAT_TOLD = 2  # told colours in a chat, besides its image


def _told(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    nouns = rng.choice(NOUNS, size=count, replace=False).tolist()
    return [(noun, pick(rng, list(COLOURS))) for noun in nouns]


def _image(rng: np.random.Generator, cells: int) -> tuple[dict, dict]:
    canvas, target = canvas_with_target(rng, cells, int(rng.integers(cells, 2 * cells)))
    return {"type": "image", "image": Image.fromarray(canvas)}, target


def _question(
    rng: np.random.Generator, question: str, told: list[tuple[str, str]], target: dict
) -> tuple[str, str, dict]:
    """The prompt and answer for ``question``; for a told colour, which fact is asked."""
    if question == "text-colour":
        asked = int(rng.integers(len(told)))
        noun, colour = told[asked]
        return PROMPTS[question].format(noun=noun), colour, {"fact": asked}
    return PROMPTS[question], target[question.removeprefix("image-")], {}


def generate_passage(rng: np.random.Generator, question: str, length: int | None = None) -> Sample:
    """An image and a passage of 4 to 6 told colours in one turn, then one question about
    either; ``length`` is ignored."""
    told = _told(rng, int(rng.integers(PASSAGE_FACTS[0], PASSAGE_FACTS[1] + 1)))
    image, target = _image(rng, PASSAGE_IMAGE_CELLS)
    passage = " ".join(f"the {noun} is {colour} ." for noun, colour in told)
    prompt, answer, asked = _question(rng, question, told, target)
    messages = [
        user(image, text(f"remember the bright shape . remember : {passage}")),
        assistant("ok"),
        user(text(prompt)),
    ]
    return Sample(messages, answer, {"length": len(told), **asked})


def generate_chat(rng: np.random.Generator, question: str, length: int | None = None) -> Sample:
    """Two told colours and an image, each in its own turn in random order, then a question
    about any of them; ``length`` is ignored."""
    told = _told(rng, CHAT_TOLD)
    image, target = _image(rng, CHAT_IMAGE_CELLS)
    turns = [user(text(f"remember : the {noun} is {colour} .")) for noun, colour in told]
    turns.append(user(image, text("remember the bright shape .")))
    order = rng.permutation(len(turns)).tolist()
    prompt, answer, asked = _question(rng, question, told, target)
    messages = []
    for turn in order:
        messages += [turns[turn], assistant("ok")]
    messages.append(user(text(prompt)))
    image_turn = order.index(len(turns) - 1)
    asked_turn = order.index(asked["fact"]) if "fact" in asked else image_turn
    return Sample(messages, answer, {"length": len(turns) + 1, "asked_turn": asked_turn})
