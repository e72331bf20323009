"""Answer questions about a long video under a KV budget, streaming it chunk by chunk.

    python examples/video_qa.py VIDEO -q "What colour was the shape?" [--model DIR] [--budget 0.1]

Without a video, writes a synthetic one first. Prints each answer and what the cache held.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import mmretain
from mmretain.media import write_video


def synthetic_video(path: Path, frames: int = 64) -> Path:
    """A red square crossing a dark frame: something to watch."""

    def frame(i: int) -> np.ndarray:
        image = np.zeros((56, 56, 3), dtype=np.uint8)
        x = (i * 2) % 44
        image[20:32, x : x + 12] = (220, 30, 30)
        return image

    write_video(path, (frame(i) for i in range(frames)), fps=8)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?", help="a video file (default: a synthetic one)")
    parser.add_argument("-q", "--question", action="append", dest="questions")
    parser.add_argument("--model", default="testbed", help="checkpoint directory or hub id")
    parser.add_argument("--policy", default="snapkv")
    parser.add_argument("--budget", default="0.1")
    parser.add_argument("--fps", type=float, default=4)
    args = parser.parse_args()
    questions = args.questions or ["what colour is the shape ?", "which shape is it ?"]
    budget = float(args.budget) if "." in args.budget else args.budget
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or synthetic_video(Path(tmp) / "demo.mp4")
        vlm = mmretain.load(args.model, policy=args.policy, budget=budget)
        answers = vlm.answer_video(video, questions, fps=args.fps, chunk_frames=8)
    for answer in answers:
        print(f"Q: {answer.question}\nA: {answer.text}")
    stats = answers[0].stats
    print(
        f"{answers[0].frames} frames, {stats.tokens_seen} tokens seen; kept "
        f"{stats.kv_fraction:.1%} of a full cache ({stats.bytes_held:,} bytes, peak "
        f"{stats.peak_bytes_held:,}); kept by modality: "
        f"{ {k: v for k, v in stats.kept_by_modality.items() if v} }"
    )


if __name__ == "__main__":
    main()
