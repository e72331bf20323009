"""Prompts as lmms-eval writes them by default (https://github.com/EvolvingLMMs-Lab/lmms-eval).

Each builder takes a dataset row and the question's options (empty for open questions) and
returns the text that follows the image or video. The instructions are the default
``post_prompt`` strings of lmms-eval 0.7.3's task configs; where the layout still differs
(Video-MME, LongVideoBench), eval/README.md says how.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .metrics import option_letters

Row = dict[str, Any]

SHORT_ANSWER = "Answer the question using a single word or phrase."
SINGLE_WORD = "Answer the question with a single word."  # ChartQA
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
BEST_OPTION = "Only give the best option.\nBest option: ("  # MLVU
# Video-MME's own instruction (https://video-mme.github.io), as lmms-eval words it.
VIDEO_MME = (
    "Select the best answer to the following multiple-choice question based on the video and "
    "the subtitles. Respond with only the letter (A, B, C, or D) of the correct option."
)
BEST_ANSWER = "The best answer is:"  # Video-MME with subtitles
MME_YES_NO = " Please answer yes or no."  # MME's own suffix, replaced by the short-answer one

# "A. text", "(A) text", "A) text": how datasets that letter their own options write them.
_LETTERED = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.*)$", re.DOTALL)


def strip_letter(option: str) -> str:
    """ "A. Apples." -> "Apples." (a dataset's own lettering, so it is not printed twice)."""
    match = _LETTERED.match(option)
    return match.group(2).strip() if match else option.strip()


def lettered(options: Sequence[str]) -> str:
    """ "A. first\\nB. second" """
    return "\n".join(
        f"{letter}. {option}"
        for letter, option in zip(option_letters(len(options)), options, strict=True)
    )


@dataclass(frozen=True)
class ShortAnswer:
    """``{question}\\n{instruction}``: VQAv2, GQA, TextVQA, POPE, MME, ChartQA, DocVQA.

    ``capitalize`` as lmms-eval does for TextVQA; ``ocr`` names the row's OCR tokens, appended as
    "Reference OCR token: a, b, c" (the LLaVA-1.5 TextVQA prompt); ``drop`` is removed from
    the question first (MME's "Please answer yes or no.").
    """

    question: str = "question"
    instruction: str = SHORT_ANSWER
    capitalize: bool = False
    ocr: str | None = None
    drop: str = ""

    def __call__(self, row: Row, options: Sequence[str] = ()) -> str:
        question = str(row[self.question]).strip()
        if self.drop:
            question = question.replace(self.drop, "")
        if self.capitalize:
            question = question.capitalize()
        if self.ocr is not None:
            question += f"\nReference OCR token: {', '.join(row[self.ocr])}"
        return f"{question}\n{self.instruction}"


SUBTITLES = "subtitles"  # the row field a video task fills with the subtitles of its frames


@dataclass(frozen=True)
class MultipleChoice:
    """``[subtitles\\n][header\\n][Context: …\\n]{question}\\n{A. …}\\n{instruction}``.

    ScienceQA-IMG (context from the hint), Video-MME (its header, subtitles in the variant that
    has them), LongVideoBench, EgoSchema, MLVU (``show_options=False``: its questions already
    list them).
    """

    question: str = "question"
    instruction: str = OPTION_LETTER
    context: str | None = None
    header: str = ""
    show_options: bool = True

    def __call__(self, row: Row, options: Sequence[str] = ()) -> str:
        parts = []
        if SUBTITLES in row:
            # lmms-eval's wording, its trailing space included.
            parts.append(f"This video's subtitles are listed below: \n{row[SUBTITLES]}")
        if self.header:
            parts.append(self.header)
        if self.context and row.get(self.context):
            parts.append(f"Context: {row[self.context]}")
        parts.append(str(row[self.question]).strip())
        if self.show_options:
            parts.append(lettered(options))
        parts.append(self.instruction)
        return "\n".join(parts)


Prompt = Callable[[Row, Sequence[str]], str]
Options = Callable[[Row], list[str]]


# -- where a row keeps its options ---------------------------------------------------------------


def listed(field: str) -> Options:
    """Options in one list field; a dataset's own "A. " lettering is removed."""

    def options(row: Row) -> list[str]:
        return [strip_letter(str(option)) for option in row[field]]

    return options


def numbered(prefix: str, count: int, missing: str = "N/A") -> Options:
    """Options in fields ``prefix0`` … ``prefix{count-1}``, unused ones holding ``missing``
    (LongVideoBench)."""

    def options(row: Row) -> list[str]:
        values = (row.get(f"{prefix}{i}") for i in range(count))
        return [str(v) for v in values if v is not None and v != missing]

    return options


_INLINE_OPTION = re.compile(r"^\s*\(([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)


def inline(field: str = "question") -> Options:
    """Options written into the question as "(A) text" lines (MLVU)."""

    def options(row: Row) -> list[str]:
        return [text for _, text in _INLINE_OPTION.findall(str(row[field]))]

    return options
