"""Stream long synthetic videos through tiny VLMs at a fixed KV budget: memory must stay flat.

For each model and each length (200, 1,000, 4,000 frames by default) a fresh process writes a
56x56 mp4 with PyAV, then answers one question with `RetainedVLM.answer_video` (frames decoded,
encoded and prefilled chunk by chunk, evicting after each chunk). It prints one markdown row:
frames, tokens seen, peak KV bytes held, peak process RSS, seconds, and seconds per 1,000 frames.

    python benchmarks/long_video.py [--frames 200,1000,4000] [--budget 256] [--chunk-frames 16]

Goal: peak RSS at 4,000 frames within 10% of that at 200 frames, and time linear in frames.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from child import run_json

MODELS = ("qwen2_vl", "llava_onevision")


def write_checkpoint(family: str, directory: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import checkpoints

    if family == "qwen2_vl":
        return checkpoints.write_qwen2_vl(directory)
    return checkpoints.write_family(family, directory)


def frames(count: int, side: int = 56):
    """Moving squares on noise, one frame at a time (never a list of all frames)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        frame = rng.integers(0, 64, (side, side, 3), dtype=np.uint8)
        x = (i * 3) % (side - 12)
        frame[20:32, x : x + 12] = (200, 40, 40)
        yield frame


def one(family: str, count: int, budget: int, chunk_frames: int) -> dict:
    from mmretain.api import load
    from mmretain.media import write_video

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "long.mp4"
        write_video(video, frames(count), fps=4)
        checkpoint = write_checkpoint(family, Path(tmp) / "model")
        vlm = load(checkpoint, policy="snapkv", budget=budget)
        start = time.perf_counter()
        answer = vlm.answer_video(
            video, "what colour is the video ?", fps=4, chunk_frames=chunk_frames, max_new_tokens=4
        )[0]
        seconds = time.perf_counter() - start
    return {
        "model": family,
        "frames": answer.frames,
        "tokens_seen": answer.stats.tokens_seen,
        "peak_kv_bytes": answer.stats.peak_bytes_held,
        "full_kv_bytes": answer.stats.bytes_full_cache,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="200,1000,4000")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--budget", type=int, default=256, help="tokens")
    parser.add_argument("--chunk-frames", type=int, default=16)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        family, count = args.one.split(",")
        print(json.dumps(one(family, int(count), args.budget, args.chunk_frames)))
        return
    print(
        f"budget {args.budget} tokens, snapkv, chunk {args.chunk_frames} frames, "
        "56x56 frames at 4 fps\n"
    )
    print(
        "| model | frames | tokens seen | peak KV bytes | full-cache KV bytes | peak RSS MiB "
        "| seconds | s / 1k frames |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for family in args.models.split(","):
        for count in map(int, args.frames.split(",")):
            print(f"{family}: {count} frames", file=sys.stderr)
            row = run_json(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    f"{family},{count}",
                    "--budget",
                    str(args.budget),
                    "--chunk-frames",
                    str(args.chunk_frames),
                ]
            )
            print(
                f"| {row['model']} | {row['frames']} | {row['tokens_seen']} "
                f"| {row['peak_kv_bytes']:,} "
                f"| {row['full_kv_bytes']:,} | {row['peak_rss_mib']:.0f} | {row['seconds']:.1f} "
                f"| {1000 * row['seconds'] / row['frames']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
