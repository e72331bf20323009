"""`mmretain eval`: benchmarks under a KV budget, resumable, shardable, with tables and plots.

    mmretain eval --suite vqa --policies full,snapkv --budgets 0.05,0.1,0.25 --out runs/vqa
    accelerate launch -m mmretain eval --suite video --limit 300 --out runs/video

Rerunning a command continues where it stopped. Tasks are read from the hub ids lmms-eval uses,
from ``--data-dir`` (a folder of local copies named like the hub datasets), or from a path given
per task (``--tasks docvqa=/data/DocVQA``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..command import ArgumentParser, add_retention_arguments, real, run_command, whole
from ..defaults import DEFAULT_MODEL, POLICY_NAMES
from .tasks import SUITES


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="mmretain eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=SUITES, help="which benchmarks (required to run)")
    parser.add_argument(
        "--tasks",
        default="",
        help="comma-separated task names of the suite, each optionally NAME=LOCAL_DIR "
        "(default: every task of the suite)",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="checkpoint directory or hub id (default: the embedded test-bed model)",
    )
    parser.add_argument(
        "--policies",
        default="full,snapkv",
        help=f"comma-separated policies, of: {', '.join(POLICY_NAMES)} (default: full,snapkv)",
    )
    parser.add_argument(
        "--budgets",
        default="0.05,0.1,0.25",
        help="comma-separated KV budgets: fractions of the prompt, token counts or byte sizes; "
        "the full cache ignores them",
    )
    parser.add_argument(
        "--limit",
        type=whole(1),
        default=None,
        help="samples per task, spread over a benchmark split (default: every sample)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (resumable)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of local datasets")
    parser.add_argument("--video-dir", type=Path, default=None, help="root of the video files")
    parser.add_argument(
        "--fps", type=real(0, above=True), default=1.0, help="video frames sampled per second"
    )
    parser.add_argument("--max-frames", type=whole(1), default=None, help="cap on frames per video")
    parser.add_argument(
        "--chunk-frames", type=whole(1), default=16, help="frames prefilled per chunk"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=whole(1),
        default=None,
        help="default: each task's own (lmms-eval's)",
    )
    add_retention_arguments(parser)
    parser.add_argument(
        "--chunk-tokens",
        type=whole(1),
        default=None,
        help="prefill this many tokens per forward, evicting after each (default: one forward)",
    )
    parser.add_argument("--dtype", default=None, help="model dtype, e.g. bfloat16")
    parser.add_argument(
        "--pictures", type=whole(0), default=1, help="retention pictures for the first N samples"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the tables and plots from the rows already in --out",
    )
    return parser


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace) -> None:
    # Imported here so that `--help` and argument errors come back without loading torch.
    from . import report
    from .grid import RunSettings, cells
    from .lock import output_lock
    from .runner import Locations, Shard, evaluate
    from .tasks import select_tasks

    if args.report_only:
        if not (args.out / "rows").is_dir():
            raise FileNotFoundError(f"no rows under {args.out / 'rows'}: run the evaluation first")
        with output_lock(args.out):
            results = report.write_report(args.out)
        print(report.terminal_table(results))
        print(f"wrote {args.out / 'report.md'}")
        return
    if args.suite is None:
        raise ValueError("give --suite (vqa, video or testbed), or --report-only")
    names, paths = [], {}
    for item in _split(args.tasks):
        name, _, path = item.partition("=")
        names.append(name)
        if path:
            paths[name] = Path(path)
    settings = RunSettings(
        model=args.model,
        fps=args.fps,
        max_frames=args.max_frames,
        chunk_frames=args.chunk_frames,
        max_new_tokens=args.max_new_tokens,
        allocation=args.allocation,
        sink=args.sink,
        recent=args.recent,
        chunk_tokens=args.chunk_tokens,
        dtype=args.dtype,
    )
    grid = cells(_split(args.policies), _split(args.budgets), settings)
    tasks = select_tasks(args.suite, names)
    shard = Shard.current()
    # Two runs appending to one folder would each score every sample.
    with output_lock(args.out, shard.rank):
        results = evaluate(
            args.out,
            tasks,
            grid,
            settings,
            limit=args.limit,
            locations=Locations(paths, args.data_dir, args.video_dir),
            shard=shard,
            pictures=args.pictures,
        )
    if results is not None:
        print(report.terminal_table(results))
        print(f"wrote {args.out / 'report.md'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("mmretain eval", lambda: run(args))
