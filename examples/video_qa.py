"""Answer questions about a long video under a KV budget, streaming it chunk by chunk.

    python examples/video_qa.py [VIDEO -q QUESTION ...] [--model DIR] [--policy P] [--budget B]

Without a video, writes a held-out test-bed needle video (128 frames of drifting grey shapes,
one bright shape in one frame) and asks about the bright shape, printing the expected answers.
The video is compressed once and every question is answered from that context. Policy and
budget default to the library's: the best policy the model ships, a quarter of the prompt.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mmretain
from mmretain.defaults import AUTO, DEFAULT_BUDGET
from mmretain.media import write_video
from mmretain.testbed.suites import make_sample


def needle_video(folder: Path, frames: int) -> tuple[Path, list[str], list[str]]:
    """A held-out needle video (one frame a second), its questions and their answers."""
    sample = make_sample("video-needle", 0, split="eval", seed=3, length=frames, question="colour")
    path = folder / "needle.mp4"
    write_video(path, sample.videos[0], fps=1)
    return path, [q for q, _ in sample.questions], [a for _, a in sample.questions]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("video", nargs="?", help="a video file (default: a test-bed needle video)")
    parser.add_argument("-q", "--question", action="append", dest="questions")
    parser.add_argument("--model", default="testbed", help="checkpoint directory or hub id")
    parser.add_argument("--policy", default=AUTO, help="the best the model ships when auto")
    parser.add_argument(
        "--budget", default=str(DEFAULT_BUDGET), help="a fraction of the prompt, tokens or bytes"
    )
    parser.add_argument("--frames", type=int, default=128, help="frames of the test-bed video")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.video:
            video, questions, expected = args.video, args.questions or ["what happens ?"], []
        else:
            video, questions, expected = needle_video(Path(tmp), args.frames)
        vlm = mmretain.load(args.model, args.policy, args.budget)
        answers = vlm.answer_video(video, questions, fps=1, chunk_frames=16)
    print(vlm.describe())
    for i, answer in enumerate(answers):
        want = f"  (expected: {expected[i]})" if expected else ""
        print(f"Q: {answer.question}\nA: {answer.text}{want}")
    stats = answers[0].stats
    kept = {k: round(v, 1) for k, v in stats.tokens_kept.items() if v}
    print(
        f"{answers[0].frames} frames, {stats.tokens_seen} tokens seen, "
        f"{stats.tokens_kept_total:.1f} kept ({stats.kv_fraction:.1%} of a full cache: "
        f"{stats.bytes_held:,} bytes, peak {stats.peak_bytes_held:,}); tokens kept by "
        f"modality: {kept}"
    )


if __name__ == "__main__":
    main()
