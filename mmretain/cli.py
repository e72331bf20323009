"""The `mmretain` command: long-video QA and image chat under one KV budget."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from .command import (
    ArgumentParser,
    add_retention_arguments,
    kv_budget,
    real,
    run_command,
    whole,
)
from .defaults import AUTO, DEFAULT_BUDGET, DEFAULT_MODEL, MAX_PRIOR, POLICY_NAMES
from .errors import UsageError

DELEGATED_HELP = {
    "train-gates": "train retention gates for a model (see `mmretain train-gates --help`)",
    "gates": "import gates trained elsewhere: TRIM-KV / DBTrimKV (see `mmretain gates --help`)",
    "testbed": "procedural suites and the test-bed models (see `mmretain testbed --help`)",
    "eval": "benchmarks under KV budgets, resumable, with tables and plots (see `mmretain eval "
    "--help`)",
}


def _delegated(name: str):
    if name == "train-gates":
        from .gates.cli import main as run
    elif name == "gates":
        from .gates.import_cli import main as run
    elif name == "eval":
        from .eval.cli import main as run
    else:
        from .testbed.cli import main as run
    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="checkpoint directory or hub id (default: the embedded test-bed model)",
    )
    parser.add_argument(
        "--policy",
        default=AUTO,
        help=f"retention policy: {', '.join(POLICY_NAMES)} (default: global when the model "
        "ships tied gates, else snapkv)",
    )
    parser.add_argument(
        "--budget",
        type=kv_budget,
        default=str(DEFAULT_BUDGET),
        help=f"KV budget: tokens (1024), a fraction of the prompt (0.1) or bytes (512MiB); "
        f"default {DEFAULT_BUDGET}",
    )
    add_retention_arguments(parser)
    parser.add_argument(
        "--max-new-tokens", type=whole(1), default=64, help="longest reply (default 64)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="mmretain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    video = commands.add_parser("video-qa", help="answer questions about a video")
    video.add_argument("video", nargs="?", help="path to a video file")
    video.add_argument(
        "-q", "--question", action="append", dest="questions", help="a question (repeatable)"
    )
    video.add_argument(
        "--demo",
        action="store_true",
        help="write a test-bed needle video (64 frames) and answer its question",
    )
    _common(video)
    video.add_argument(
        "--fps", type=real(0, above=True), default=1.0, help="frames sampled per second (default 1)"
    )
    video.add_argument(
        "--max-frames", type=whole(1), default=None, help="most frames to read (default all)"
    )
    video.add_argument(
        "--chunk-frames", type=whole(1), default=16, help="frames per chunk (default 16)"
    )
    video.add_argument("--start", type=real(0), default=None, help="seconds")
    video.add_argument("--end", type=real(0), default=None, help="seconds")
    video.add_argument(
        "--question-first",
        action="store_true",
        help="put the question before the video (query-aware eviction; streams once per question)",
    )
    video.add_argument(
        "--relevance",
        choices=("clip",),
        default=None,
        help="score frames against each question with open_clip (needs the clip extra): rank "
        "video entries with that prior (--prior) and stream only the relevant chunks "
        "(--retrieve)",
    )
    video.add_argument(
        "--prior",
        type=real(0, MAX_PRIOR),
        default=None,
        help="weight of the relevance prior (default 1.0)",
    )
    video.add_argument(
        "--retrieve",
        type=whole(0),
        default=0,
        help="stream only the N most relevant chunks, plus a thin uniform sample (default 0: all)",
    )
    video.add_argument(
        "--clip-model",
        default="testbed-clip",
        help="open_clip model directory or architecture name (default: the test-bed CLIP)",
    )
    video.add_argument(
        "--clip-pretrained", default=None, help="its weights, a .safetensors file or directory"
    )
    video.add_argument("--json", action="store_true", help="print one JSON object")

    chat = commands.add_parser("chat", help="chat about an image, interactively")
    chat.add_argument("--image", required=True, help="path to an image")
    _common(chat)

    # Commands whose own parsers live with their modules: everything after the name goes there.
    for name, help_text in DELEGATED_HELP.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _utf8(text: str, where: str) -> str:
    """``text`` as given, or a usage error when it holds bytes that are not UTF-8 text
    (Python keeps them as lone surrogates, which no tokenizer takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{where} holds bytes that are not UTF-8 text; give it as UTF-8") from None
    return text


def _load(args):
    from .location import checkpoint_location

    checkpoint_location(args.model)  # a missing model fails before torch loads
    from .api import load

    return load(
        args.model,
        policy=args.policy,
        budget=args.budget,
        allocation=args.allocation,
        sink=args.sink,
        recent=args.recent,
        relevance=_relevance(args),
    )


def _relevance(args):
    """The `Relevance` the video flags ask for, or None."""
    if getattr(args, "relevance", None) is None:
        if getattr(args, "prior", None) is not None or getattr(args, "retrieve", 0):
            raise UsageError("--prior and --retrieve need --relevance clip")
        return None
    from .relevance import Relevance

    prior = 1.0 if args.prior is None else args.prior
    if not prior and not args.retrieve:
        raise UsageError("--prior 0 without --retrieve N leaves --relevance nothing to do")
    return Relevance(
        model=args.clip_model, pretrained=args.clip_pretrained, prior=prior, retrieve=args.retrieve
    )


def video_qa(args) -> None:
    if not args.demo:
        if not args.video or not args.questions:
            raise UsageError("give a video and at least one -q QUESTION, or --demo")
        _answer_video(args, expected=None)
        return
    if args.video or args.questions:
        raise UsageError("--demo makes its own video and question; drop the video and -q")
    from .testbed.video_file import write_needle_video

    with tempfile.TemporaryDirectory() as tmp:
        info = write_needle_video(Path(tmp) / "needle.mp4", frames=64, depth=0.6, seed=1)
        if not args.json:
            print(
                f"demo: a {info['frames']}-frame video of drifting grey shapes with one bright "
                f"shape at frame {info['needle_frame']}"
            )
        args.video, args.questions = str(Path(tmp) / "needle.mp4"), [info["question"]]
        _answer_video(args, expected=info["answer"])


def _answer_video(args, expected: str | None) -> None:
    from tqdm import tqdm

    from .media import Video

    # Check the questions and the video before loading a model: bad input fails in a moment.
    args.questions = [_utf8(q, "-q") for q in args.questions]
    video = Video(
        args.video, fps=args.fps, max_frames=args.max_frames, start=args.start, end=args.end
    )
    vlm = _load(args)
    bar = tqdm(desc="frames", unit="frame", file=sys.stderr, disable=args.json or None)

    def progress(p) -> None:
        bar.total = p.frames_total
        bar.n = p.frames_done
        fill = p.entries_kept / p.entries_budget if p.entries_budget else 0.0
        bar.set_postfix(tokens=p.tokens_seen, cache=f"{fill:.0%} of budget")
        bar.refresh()

    answers = vlm.answer_video(
        video,
        args.questions,
        chunk_frames=args.chunk_frames,
        question_first=args.question_first,
        max_new_tokens=args.max_new_tokens,
        progress=progress,
    )
    bar.close()
    if args.json:
        print(
            json.dumps(
                {
                    "video": args.video,
                    "model": args.model,
                    "policy": vlm.run.policy.name,
                    "budget": args.budget,
                    "answers": [
                        {
                            "question": a.question,
                            "answer": a.text,
                            "frames": a.frames,
                            "seconds": round(a.seconds, 3),
                            "stats": asdict(a.stats),
                        }
                        for a in answers
                    ],
                    "peak_rss_mib": round(_peak_rss_mib(), 1),
                    **({"expected": expected} if expected is not None else {}),
                }
            )
        )
        return
    print(vlm.describe())
    for a in answers:
        print(f"Q: {a.question}\nA: {a.text}")
    if expected is not None:
        print(f"(expected: {expected})")
    stats = answers[-1].stats
    print()
    print(f"{'modality':<10} {'tokens seen':>12} {'tokens kept':>12}")
    for name, seen in stats.seen_by_modality.items():
        if seen:
            print(f"{name:<10} {seen:>12} {stats.tokens_kept[name]:>12.1f}")
    print(
        f"\nKV bytes held {stats.bytes_held:,} ({stats.kv_fraction:.1%} of a full cache), "
        f"peak {stats.peak_bytes_held:,}; peak RSS {_peak_rss_mib():.0f} MiB; "
        f"{answers[-1].frames} frames in {answers[-1].seconds:.1f} s"
    )


def chat(args) -> None:
    from .media import load_image

    load_image(args.image)  # a bad image fails before the model loads
    vlm = _load(args)
    messages: list[dict] = []
    first = True
    print(
        f"{vlm.describe()}. Type a message; /reset starts over, /quit leaves.",
        file=sys.stderr,
    )
    from .testbed import MODELS
    from .testbed.suites.image_needle import PROMPTS

    if args.model in MODELS:
        # A tiny model trained on three questions: others get no end of turn, so say them.
        asked = "; ".join(f"'{q}'" for q in PROMPTS.values())
        print(f"The test-bed model answers, in one word: {asked}.", file=sys.stderr)
    for line in _lines(sys.stdin):
        text = _utf8(line.strip(), "the message")
        if text == "/quit":
            break
        if text == "/reset":
            vlm.reset()
            messages, first = [], True
            print("(conversation reset; the image is asked about afresh)", file=sys.stderr)
            continue
        if not text:
            continue
        content = [{"type": "text", "text": text}]
        if first:
            content.insert(0, {"type": "image", "image": args.image})
            first = False
        messages.append({"role": "user", "content": content})
        answer = vlm.chat(messages, max_new_tokens=args.max_new_tokens)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer.text}]})
        s = answer.stats
        print(answer.text)
        print(
            f"[kept {s.tokens_kept_total:.1f} of {s.tokens_seen} tokens, "
            f"{s.kv_fraction:.0%} of a full cache]",
            file=sys.stderr,
        )


def _lines(stream) -> Iterator[str]:
    """Lines typed at a terminal, each after a "> " prompt; lines of a pipe as they come."""
    while True:
        if stream.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line:
            return
        yield line


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED_HELP:
        return _delegated(argv[0])(argv[1:])
    args = build_parser().parse_args(argv)
    command = {"video-qa": video_qa, "chat": chat}[args.command]
    return run_command("mmretain", lambda: command(args))


if __name__ == "__main__":
    sys.exit(main())
