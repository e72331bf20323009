"""`mmretain testbed`: train a test-bed model, write a needle video, evaluate the shipped models."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from ..command import ArgumentParser, real, run_command, whole
from .suites import SUITES


def train_command(args: argparse.Namespace) -> None:
    import torch

    from .train import train
    from .train_config import TrainConfig

    torch.set_num_threads(args.threads)
    config = TrainConfig(arch=args.arch, size=args.size, seed=args.seed, steps=args.steps)
    record = train(config, args.out, minutes=args.minutes)
    last = record["history"][-1]["held_out"] if record["history"] else {}
    print(
        json.dumps(
            {
                "out": str(args.out),
                "seconds": record["seconds"],
                "steps": record["steps_done"],
                "held_out": last,
            },
            indent=1,
        )
    )


def train_clip_command(args: argparse.Namespace) -> None:
    import torch

    from .clip import train_clip

    torch.set_num_threads(args.threads)
    record = train_clip(args.out, steps=args.steps, seed=args.seed, minutes=args.minutes)
    print(json.dumps({"out": str(args.out), **{k: record[k] for k in ("seconds", "steps_done")}}))


def make_video_command(args: argparse.Namespace) -> None:
    from .video_file import write_needle_video

    info = write_needle_video(
        args.out,
        args.frames,
        args.needle_depth,
        suite=args.suite,
        question=args.question,
        seed=args.seed,
        fps=args.fps,
    )
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    print(f"question: {info['question']}\nanswer: {info['answer']}")


def evaluate_command(args: argparse.Namespace) -> None:
    import torch

    from . import model_path
    from .evaluate import evaluate_checkpoints

    torch.set_num_threads(args.threads)
    paths = {name: model_path(name) for name in args.models.split(",")}
    command = "mmretain testbed evaluate " + shlex.join(
        ["--out", str(args.out), "--models", args.models, "--samples", str(args.samples)]
    )
    evaluate_checkpoints(paths, Path(args.out), command, args.samples)
    print(f"wrote {args.out}")


def _add_commands(commands) -> None:
    train = commands.add_parser("train", help="train a test-bed model from scratch")
    train.add_argument("--arch", choices=("qwen2vl", "llava-onevision"), default="qwen2vl")
    train.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    train.add_argument("--seed", type=whole(0), default=0)
    train.add_argument("--steps", type=whole(1), default=3000)
    train.add_argument(
        "--minutes", type=real(0, above=True), default=None, help="stop early after this long"
    )
    train.add_argument("--size", choices=("default", "tiny"), default="default")
    train.add_argument(
        "--threads",
        type=whole(1),
        default=1,
        help="torch threads (default 1: reproducible, and faster on a busy machine)",
    )
    train.set_defaults(handler=train_command)

    clip = commands.add_parser(
        "train-clip", help="train the test-bed CLIP that scores frames against a question"
    )
    clip.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    clip.add_argument("--steps", type=whole(1), default=4000)
    clip.add_argument(
        "--minutes", type=real(0, above=True), default=10.0, help="stop early after this long"
    )
    clip.add_argument("--seed", type=whole(0), default=0)
    clip.add_argument("--threads", type=whole(1), default=1, help="torch threads (default 1)")
    clip.set_defaults(handler=train_clip_command)

    video = commands.add_parser("make-video", help="write a needle video (mp4) with its Q&A")
    video.add_argument("out", type=Path, help="the .mp4 to write; the Q&A goes to .json beside it")
    video.add_argument("--frames", type=whole(1), default=32)
    video.add_argument(
        "--needle-depth", type=real(0, 1), default=0.5, help="0 = first frame, 1 = last"
    )
    video.add_argument(
        "--suite", choices=[n for n, s in SUITES.items() if s.is_video], default="video-needle"
    )
    video.add_argument("--question", default=None, help="question type (default: drawn by seed)")
    video.add_argument("--seed", type=whole(0), default=0)
    video.add_argument("--fps", type=real(0, above=True), default=1.0)
    video.set_defaults(handler=make_video_command)

    evaluate = commands.add_parser("evaluate", help="full-cache accuracy of the shipped models")
    evaluate.add_argument("--out", default="eval/results/testbed_full_cache.md")
    evaluate.add_argument("--models", default="testbed,testbed-llava")
    evaluate.add_argument(
        "--samples", type=whole(1), default=500, help="per suite, question, length"
    )
    evaluate.add_argument("--threads", type=whole(1), default=1)
    evaluate.set_defaults(handler=evaluate_command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="mmretain testbed",
        description="The test-bed: tiny models trained on procedural image and video suites. "
        "Train one, write a needle video with its question, or measure the shipped models.",
    )
    _add_commands(parser.add_subparsers(dest="testbed_command", required=True))
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: args.handler(args))
