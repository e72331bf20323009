"""Subtitles of the frames a model sees, from an SRT file (Video-MME's "with subtitles" setting).

As in Video-MME's protocol, only the subtitle lines on screen at the sampled frames go into the
prompt, each once, in order: the text grows with the frames seen, not with the video's length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_TIME = re.compile(r"(\d+):(\d{2}):(\d{2})[,.](\d{1,3})")
_TAG = re.compile(r"<[^>]+>")
NO_SUBTITLES = "No subtitles available"


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str


def _seconds(stamp: str) -> float:
    match = _TIME.fullmatch(stamp.strip())
    if match is None:
        raise ValueError(f"not an SRT time stamp: {stamp!r} (expected HH:MM:SS,mmm)")
    hours, minutes, seconds, millis = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis.ljust(3, "0")) / 1000


def parse_srt(text: str) -> list[Cue]:
    """The cues of an SRT document; markup such as ``<font …>`` is removed from their text."""
    cues = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip()):
        lines = block.strip().split("\n")
        timing = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if timing is None:
            continue
        start, end = lines[timing].split("-->")
        words = " ".join(_TAG.sub("", line).strip() for line in lines[timing + 1 :])
        if words.strip():
            cues.append(Cue(_seconds(start), _seconds(end), words.strip()))
    return cues


def subtitles_at(path: Path, timestamps: Sequence[float]) -> str:
    """The lines of the SRT file ``path`` on screen at any of ``timestamps`` (seconds), one per
    line; `NO_SUBTITLES` when the file does not exist (Video-MME has videos without any)."""
    if not path.is_file():
        return NO_SUBTITLES
    cues = parse_srt(path.read_text(encoding="utf-8", errors="replace"))
    shown = [cue.text for cue in cues if any(cue.start <= t < cue.end for t in timestamps)]
    return "\n".join(shown) if shown else NO_SUBTITLES
