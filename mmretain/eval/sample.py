"""`EvalSample`: one question as the runner feeds it to a model, with what it is scored against."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import media


@dataclass(frozen=True)
class Reference:
    """What a sample is scored against, read before any media is touched: a sample whose media
    fails still has its reference, and scores as a wrong answer."""

    id: str
    answer: Any  # a string, a list of strings (VQA, ANLS) or an option letter
    options: tuple[str, ...] = ()
    groups: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalSample:
    """A question with its image(s) or video, ready for `RetainedVLM`.

    Image questions are chat ``messages`` (images inline); video questions are a `media.Video`
    and the ``prompt`` that follows it.
    """

    index: int
    reference: Reference
    prompt: str
    messages: list[dict[str, Any]] | None = None
    video: media.Video | None = None

    @property
    def images(self) -> list[Any]:
        return [
            part["image"]
            for message in self.messages or []
            if isinstance(message["content"], list)
            for part in message["content"]
            if part.get("type") == "image"
        ]


def image_question(image: Any, prompt: str) -> list[dict[str, Any]]:
    """One user turn: the image, then the prompt."""
    content = [{"type": "image", "image": image}, {"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


@dataclass(frozen=True)
class MediaSettings:
    """How videos are sampled; part of what a run's rows depend on."""

    fps: float | None = 1.0
    max_frames: int | None = None

    def open(self, path: Path) -> media.Video:
        return media.Video(path, fps=self.fps, max_frames=self.max_frames)
