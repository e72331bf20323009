"""Question-aware long video on the test-bed: no CLIP, the relevance prior, retrieval.

Needle videos of 1,024 and 4,096 frames, the question known before they stream, KV budgets of
1% and 2%, policies `global` and `snapkv`, and the full cache for reference. Each cell runs in
its own process, so its peak RSS is its own.

    python eval/relevance_testbed.py --videos 6 --out eval/relevance_testbed.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {
    "no CLIP": None,
    "prior": {"prior": 1.0},
    "retrieval": {"prior": 0.0, "retrieve": 1, "context_frames": 16},
}


def cell(args: argparse.Namespace) -> None:
    """One (length, budget, policy, mode) cell over the videos in --dir; prints one JSON row.

    The question is known before any frame streams (CLIP scores the frames against it); the
    prompt puts it after the video, as the test-bed model was trained. A retrieval cell gets
    the same memory as streaming the whole video at that budget: the fraction is turned into
    tokens of the whole video's prompt, which the cell without CLIP records per video.
    """
    import torch

    import mmretain
    from mmretain.relevance import Relevance

    torch.set_num_threads(args.threads)
    options = MODES[args.mode]
    relevance = Relevance(**options) if options else None
    rows = []
    for sidecar in sorted(Path(args.dir).glob(f"needle_{args.frames}_*.json")):
        info = json.loads(sidecar.read_text())
        seen = sidecar.with_suffix(".tokens")
        budget = float(args.budget)
        if options and options.get("retrieve"):
            budget = max(1, int(budget * int(seen.read_text())))
        vlm = mmretain.load("testbed", policy=args.policy, budget=budget, relevance=relevance)
        (answer,) = vlm.answer_video(sidecar.with_suffix(".mp4"), info["question"])
        if options is None:
            seen.write_text(str(answer.stats.tokens_seen))
        rows.append((answer.text == info["answer"], answer.seconds, answer.frames))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "accuracy": sum(r[0] for r in rows) / len(rows),
                "seconds": sum(r[1] for r in rows) / len(rows),
                "frames": sum(r[2] for r in rows) / len(rows),
                "peak_rss_mib": peak,
                "videos": len(rows),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3, help="needle videos per length")
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--budgets", default="0.01,0.02")
    parser.add_argument("--policies", default="global,snapkv")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="eval/relevance_testbed.md")
    parser.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--budget", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        cell(args)
        return
    from mmretain.testbed.video_file import write_needle_video

    lengths = [int(n) for n in args.lengths.split(",")]
    lines = [
        "# Question-aware long video on the test-bed",
        "",
        f"`python eval/relevance_testbed.py --videos {args.videos} --lengths {args.lengths} "
        f"--budgets {args.budgets} --policies {args.policies}`",
        "",
        f"{args.videos} needle videos per length (needle depth drawn by seed), the shipped "
        "test-bed model and test-bed CLIP, on CPU with "
        f"{args.threads} torch thread(s). The question is known before the video streams (CLIP "
        "scores every frame against it first); the prompt places it after the video, as the "
        "test-bed model was trained. Prior: weight 1.0. Retrieval: the most relevant chunk of 16 "
        "frames plus 16 frames sampled uniformly (32 frames, the model's training length), no "
        "prior, at the same memory as the whole video at that budget (the fraction turned into "
        "tokens of the whole video's prompt). Budget 100%: the full cache, for reference. Seconds "
        "per video include the CLIP pass; peak RSS is the cell's process.",
        "",
        "| frames | budget | policy | relevance | accuracy | s / video | peak RSS MiB "
        "| frames streamed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for frames in lengths:
            for i in range(args.videos):
                depth = (0.13 + 0.37 * i) % 1
                write_needle_video(Path(tmp) / f"needle_{frames}_{i}.mp4", frames, depth, seed=i)
        policies = args.policies.split(",")
        plan = [(budget, policies) for budget in args.budgets.split(",")]
        grid = [
            (frames, budget, policy, mode)
            for frames in lengths
            for budget, names in [("1.0", ["global"]), *plan]
            for policy in names
            for mode in (MODES if budget != "1.0" else ["no CLIP"])
        ]
        for frames, budget, policy, mode in grid:
            command = [
                sys.executable,
                __file__,
                "--cell",
                f"--dir={tmp}",
                f"--frames={frames}",
                f"--budget={budget}",
                f"--policy={policy}",
                f"--mode={mode}",
                f"--threads={args.threads}",
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            lines.append(
                f"| {frames} | {float(budget):.0%} | {policy} | {mode} "
                f"| {row['accuracy']:.0%} | {row['seconds']:.1f} "
                f"| {row['peak_rss_mib']:.0f} | {row['frames']:.0f} |"
            )
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
