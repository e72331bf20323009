"""A needle video as a real mp4 file, with its question and answer beside it."""

from __future__ import annotations

import json
from pathlib import Path

from ..media import write_video
from .suites import make_sample


def write_needle_video(
    out: str | Path,
    frames: int,
    depth: float,
    *,
    suite: str = "video-needle",
    question: str | None = None,
    seed: int = 0,
    fps: float = 1.0,
) -> dict:
    """Write ``out`` (mp4) and ``out`` with suffix .json; return the sidecar's content.

    At the default 1 frame per second, a reader sampling one frame a second sees every frame,
    the needle's included.
    """
    out = Path(out)
    sample = make_sample(
        suite, 0, split="eval", seed=seed, question=question, length=frames, depth=depth
    )
    write_video(out, sample.videos[0], fps=fps)
    meta = sample.metadata
    info = {
        "video": out.name,
        "question": sample.question,
        "answer": sample.answer,
        "suite": suite,
        "question_type": meta["question"],
        "frames": frames,
        "fps": fps,
        "needle_frame": round(meta["depth"] * (frames - 1)),
        "seed": seed,
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return info
