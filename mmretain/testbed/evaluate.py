"""Full-cache accuracy of the shipped models on held-out samples, as a markdown table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .scoring import accuracy
from .suites import SUITES, make_sample

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Result:
    """Accuracy on one (suite, question, length), overall and per needle depth."""

    suite: str
    question: str
    length: int
    count: int
    accuracy: float
    by_depth: dict[float, float]


def evaluate_model(model, processor, count: int = 500, batch_size: int = 16) -> list[Result]:
    """Every suite and question on ``count`` held-out samples; video suites at 1x, 4x and 8x
    their training length, with depths spread evenly over ``DEPTHS``."""
    plan = [
        (name, question, length)
        for name, spec in SUITES.items()
        for question in spec.questions
        for length in spec.eval_lengths
    ]
    results = []
    for name, question, length in tqdm(plan, desc="evaluate", dynamic_ncols=True):
        video = SUITES[name].is_video
        by_depth = {}
        for depth in DEPTHS if video else (None,):
            indices = (
                range(count) if depth is None else range(DEPTHS.index(depth), count, len(DEPTHS))
            )
            if not indices:  # fewer samples than depths: this depth has none to report
                continue
            batch = (
                make_sample(name, i, split="eval", question=question, length=length, depth=depth)
                for i in indices
            )
            by_depth[depth] = (accuracy(model, processor, batch, batch_size), len(indices))
        total = sum(n for _, n in by_depth.values())
        overall = sum(a * n for a, n in by_depth.values()) / total
        depths = {d: a for d, (a, _) in by_depth.items() if d is not None}
        results.append(Result(name, question, length, total, overall, depths))
    return results


def markdown(tables: dict[str, list[Result]], command: str, seconds: dict[str, float]) -> str:
    """One table per model: suite, question, length, samples, accuracy, accuracy by depth."""
    depth_heads = " | ".join(f"d={d:g}" for d in DEPTHS)
    lines = [
        "# Test-bed models: full-cache accuracy",
        "",
        f"Produced by `{command}`. Greedy answer (one word) on held-out samples (evaluation",
        "seeds, never trained on), no eviction. Length is the canvas side in cells for the",
        "image suite, frames for the video suites (trained at 32; 4x and 8x never seen), and",
        "turns for the dialogue. Video needles are placed at the depths d, equally often.",
    ]
    for model, results in tables.items():
        lines += [
            "",
            f"## {model} ({seconds[model]:.0f} s to evaluate)",
            "",
            f"| suite | question | length | samples | accuracy | {depth_heads} |",
            "|---|---|---:|---:|---:|" + "---:|" * len(DEPTHS),
        ]
        for r in results:
            depths = " | ".join(f"{r.by_depth[d]:.1%}" if d in r.by_depth else "" for d in DEPTHS)
            head = f"| {r.suite} | {r.question} | {r.length} | {r.count} | {r.accuracy:.1%}"
            lines.append(f"{head} | {depths} |")
    return "\n".join(lines) + "\n"


def evaluate_checkpoints(
    paths: dict[str, Path], out: Path, command: str, count: int = 500
) -> dict[str, list[Result]]:
    """Evaluate each named checkpoint directory and write the markdown report to ``out``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    tables, seconds = {}, {}
    for name, path in paths.items():
        start = time.perf_counter()
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        tables[name] = evaluate_model(model, processor, count)
        seconds[name] = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(tables, command, seconds))
    return tables
