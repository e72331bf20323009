"""Learned retention gates against the heuristics on the test-bed: writes eval/gates_<model>.md.

    python eval/gates_testbed.py [--model testbed|testbed-llava] [--limit 40]

Runs (or resumes) the test-bed suite on a shipped test-bed model, whose gates ship beside it,
for every policy at 5, 10, 25 and 50% of the prompt, plus the full cache, and `global` once more
with the allocation its gates do not name. On the conversations it also runs the gated policies
and the best heuristics at fixed token budgets (one cap for the whole conversation), and on the
long videos `global` (and SnapKV for reference) at a token budget equal to the length of a
training-length prompt. The rows land in ``eval/results/<model>`` in the layout of
``mmretain eval --suite testbed --out eval/results/<model>``, so that command's report and plot
cover these cells too (the other allocation in ``eval/results/<model>-<allocation>``). Then one
table per test-bed suite, cells below the same policy at a smaller budget marked, and the
goals checked against the numbers, met or not.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from mmretain.eval import CellResult, RunSettings, cells, evaluate, select_tasks
from mmretain.eval.grid import FULL
from mmretain.eval.records import CellFiles
from mmretain.eval.report import collect
from mmretain.testbed import MODELS, SUITES, model_path

HERE = Path(__file__).parent
POLICIES = ["full", "random", "streaming", "knorm", "snapkv", "h2o", "tova", "fastv"]
GATED = ["trimkv", "global"]
VARIANT = "global, other allocation"  # `global` with the allocation its gates do not name
BUDGETS = ["0.05", "0.1", "0.25", "0.5"]
HEURISTICS = POLICIES[1:]
# How the LLaVA test-bed gates' allocation was chosen: `global` on samples 200-319 of the image
# needle at 5% with each allocation (eval with a selection starting at 200).
ALLOCATION_CHOICE = "96.7 with `layer` against 90.8 with `global` (videos at 128 frames: 100 both)"
CONVERSATIONS = ("dialogue", "image-chat")
# A fixed cap for a whole conversation: nothing is evicted until the cache reaches it.
CONVERSATION_TOKENS = ["16", "32"]
CONVERSATION_POLICIES = ["snapkv", "tova", "trimkv", "global"]
CONVERSATION_NOTE = [
    "The conversation arrives turn by turn, as in a chat: each earlier turn is prefilled,",
    "answered by the model (up to 16 tokens) and evicted from before the next, and the model's",
    "own replies stand in the conversation, so the cache carries over every turn (the",
    "restarts column of the report is 0 in every cell). Only the latest user message is",
    "protected, in at most half of the budget. A fraction is of the conversation so far: at",
    "turn 1 it is a fraction of turn 1 alone, so at 5-10% what turn 1 told is cut to 1-3",
    "tokens per head before any later turn exists, and never comes back as the cap grows. A",
    "token budget is one cap for the whole conversation, and nothing is evicted before the",
    "cache reaches it.",
    "",
]
NOTES = {
    "image-needle": [
        "Flagged on the Qwen2-VL model: `global` at 10% (93.3, after 100.0 at 5%). All four",
        "misses are the top/bottom question about a needle just above the middle (rows 4-6 of",
        '16) answered "bottom"; two of them miss at 25% too. Measured on samples 37, 57 and 16',
        "(needle rows 6, 5 and 4): the image entries kept, in the top and the bottom half, were",
        "2.1 / 2.9, 1.5 / 3.2 and 2.6 / 2.5 token-equivalents at 5% (all right), 7.5 / 6.4, 6.0",
        "/ 7.9 and 8.1 / 5.8 at 10% (all wrong), 39.5 / 12.9, 32.6 / 19.4 and 29.8 / 22.5 at 25%",
        "(the first two wrong) and 53 / 67, 41 / 79 and 42 / 79 at 50% (all right). The model",
        "places the needle against the image tokens it still sees, and which rows survive",
        "changes with the budget without a monotone trend, so a needle next to the middle row",
        "flips; the gates are query-agnostic and nothing in them knows a position will be asked.",
        "Not fixed; 4 of 60 samples, all within two rows of the middle.",
        "",
    ],
    "dialogue": [
        *CONVERSATION_NOTE[:-1],
        "",
        "Why `global` stays low at 5-10% (measured on the Qwen2-VL model, 24 text-colour",
        "samples each): the cap after turn 1 (12-13 tokens) is one entry per layer and head,",
        "8 in all, and the protected question keeps its last token in half of them, so the told",
        "colour survives turn 1 in 4 of 24 samples at both budgets and `global` answers 0 and 4",
        "of 24. With the question unprotected (`protect_turn=False`) the colour survives turn 1",
        "in 17 of 24 and `global` answers 5 and 11 of 24. Under `trimkv`'s uniform allocation a",
        "head's share is one entry and half of it is none, so nothing is protected there: that",
        "is why `trimkv` leads at 5-10% (image-shape questions at 5%: 24 of 24 against 6 of 24).",
        "Giving every allocation the same protection room (half of each head's even share,",
        "summed) was tried and dropped: `global` did not move (31.7 and 46.7 at 5% and 10%) and",
        "SnapKV at 25% fell from 65.0 to 36.7, because at 25% the whole-budget room had also",
        "protected the colour, the question's second-to-last token.",
        "",
    ],
    "image-chat": CONVERSATION_NOTE,
    "video-needle-distractors": [
        "The video needle with one frame in eight flashing a dim coloured shape (the needle's",
        "palette at 55% of its intensity), which looks to a heuristic as unusual as the needle",
        "does; neither model nor gates were trained on it. Chosen among other haystacks (dim or",
        "brighter grey shapes, more shapes, a noisy background, fewer, more or other flashes) on",
        "held-out samples 200-259 at 128 frames, not the table's. There it scored: full 96.7;",
        "`global` 100/100 at 5%/10%; the best heuristic, TOVA, 76.7/75.0; K-norm 41.7/60.0,",
        "against 73.3/75.0 on the plain needle there (91.7/91.7 on this table's samples).",
        "At 256 frames (samples 200-229): full 96.7; `global` 96.7/93.3; SnapKV 66.7/70.0.",
        "",
    ],
}
# The suites with several facts, which the shipped models were not trained on: with the full
# cache they answer the image questions but not which colour a noun was told among several
# (40 held-out samples, `mmretain eval --policies full --limit 40 --chunk-tokens 32`).
UNTRAINED = {
    "testbed": {"image-chat": (82.5, 41.7), "text-and-image": (75.0, 16.7)},
    "testbed-llava": {"image-chat": (72.5, 25.0), "text-and-image": (75.0, 16.7)},
}


def _untrained(model: str) -> dict[str, str]:
    return {
        suite: f"the model was not trained on it: its full cache answers {overall}% of held-out "
        f"samples, {text}% of the questions about a told colour"
        for suite, (overall, text) in UNTRAINED[model].items()
    }


# Suites a model's table leaves out, and why.
LEFT_OUT = {
    "testbed": {
        "video-needle-distractors": "its full cache answers 50.0% on held-out samples 200-229 "
        "at 128 frames, too low for accuracy relative to it to mean much",
        **_untrained("testbed"),
    },
    "testbed-llava": _untrained("testbed-llava"),
}
# The protections a user gets (the question's text; no sinks or recent window). Prompts are
# prefilled 32 tokens at a time with eviction after each, so an image or an earlier turn is
# compressed before the question arrives (as a video is, chunk by chunk); one token is the
# whole one-word answer.
SETTINGS = RunSettings(model="testbed", max_new_tokens=1, chunk_tokens=32)


def training_prompt_tokens(out: Path) -> int:
    """Tokens of a training-length needle prompt, read from the full cache's rows."""
    task = select_tasks("testbed", ["video-needle"])[0]  # the training length comes first
    rows = CellFiles(out / "rows" / task.name, FULL).rows()
    return max(sum(row["tokens_seen"].values()) for row in rows)


def other_allocation(home: Path) -> str:
    """The allocation `global`'s gates do not name (`layer` when they name none)."""
    record = json.loads((home / "retention_gates" / "retention_gates.json").read_text())
    return "global" if record.get("allocation") == "layer" else "layer"


def allocation_note(home: Path) -> list[str]:
    """What the tied gates' own allocation is, when they name one (see `GatesConfig`)."""
    record = json.loads((home / "retention_gates" / "retention_gates.json").read_text())
    if not record.get("allocation"):
        return []
    return [
        f"`global` ranks with allocation `{record['allocation']}`, which its gates name: chosen "
        "on held-out samples 200-319 (not the table's), where the image needle at 5% scored "
        f"{ALLOCATION_CHOICE}.",
        "",
    ]


def table(results: list[CellResult], suite: str) -> list[str]:
    """Rows: policies; columns: budgets; cells: accuracy (KV held as % of the full cache),
    marked ▼ where the cell falls below the same policy at a smaller budget."""
    by_task = defaultdict(dict)
    for r in results:
        if r.task.split("@")[0] == suite:
            by_task[r.task][r.cell] = r
    lines = []
    for task, found in by_task.items():
        extra = sorted({r.budget for r in found.values() if r.budget not in BUDGETS} - {None})
        budgets = BUDGETS + extra
        heads = [_budget_label(b) for b in budgets]
        lines += [f"### {task}", "", "| policy | " + " | ".join(heads) + " |"]
        lines.append("|---" * (len(budgets) + 1) + "|")
        full = found.get(FULL)
        if full:
            lines.append(f"| full | {full.score:.1f} (100%) |" + " |" * (len(budgets) - 1))
        for policy in HEURISTICS + GATED + [VARIANT]:
            cells_ = [found.get(f"{policy}@{b}") for b in budgets]
            if any(cells_):
                text = [_cell_text(c) for c in cells_]
                lines.append(f"| {policy} | " + " | ".join(text) + " |")
        lines.append("")
    return lines


def _cell_text(cell: CellResult | None) -> str:
    if cell is None:
        return ""
    flag = f" ▼{_budget_label(cell.below_smaller_budget)}" if cell.below_smaller_budget else ""
    return f"{cell.score:.1f} ({cell.kv_percent:.0f}%){flag}"


def _budget_label(budget: str) -> str:
    return f"{float(budget):.0%}" if "." in budget else f"{budget} tokens"


def flagged(results: list[CellResult]) -> list[str]:
    """Every cell more than two standard errors below the same policy at a smaller budget."""
    return [
        f"{r.task} {r.policy} at {_budget_label(r.budget)}: {r.score:.1f}, below "
        f"{_budget_label(r.below_smaller_budget)}"
        for r in results
        if r.below_smaller_budget
    ]


def not_run(suites: list[str], left_out: dict[str, str]) -> list[str]:
    """A line naming the suites this run did not cover, if any."""
    skipped = [s for s in SUITES if s not in suites and s not in left_out]
    if not skipped:
        return []
    return [f"Not run this time: {', '.join(f'`{s}`' for s in skipped)}.", ""]


def goals(results: list[CellResult], train_budget: int | None) -> list[str]:
    """The three goals, each checked on every task it applies to."""
    found = {(r.task, r.cell): r for r in results}
    tasks = sorted({r.task for r in results})
    out = ["## Goals", ""]

    def score(task: str, cell: str) -> float | None:
        return found[(task, cell)].score if (task, cell) in found else None

    for number, budget, share in (("1", "0.1", 0.98), ("1b", "0.05", 0.9)):
        ratios = []
        for task in tasks:
            full, gated = score(task, FULL), score(task, f"global@{budget}")
            if full and gated is not None:
                met = gated >= share * full
                ratios.append(f"{task} {100 * gated / full:.0f}%" + ("" if met else " (missed)"))
        out.append(
            f"{number}. At {float(budget):.0%}, `global` reaches >= {share:.0%} of the full "
            "cache: " + ", ".join(ratios) + "."
        )
    margins = []
    for task in tasks:
        gated, untied = score(task, "global@0.05"), score(task, "trimkv@0.05")
        if gated is not None and untied is not None:
            margins.append(f"{task} {gated - untied:+.1f}")
    out.append(
        "1c. At 5%, `global` beats `trimkv` (untied gates, uniform allocation) by 10 points or "
        "more on at least one suite: " + ", ".join(margins) + "."
    )
    inversions = flagged(results)
    out.append(
        "1d. Cells more than two standard errors below the same policy at a smaller budget: "
        + ("; ".join(inversions) if inversions else "none")
        + "."
    )
    for number, policy in (("2", "global"), ("2b", "trimkv")):
        beaten = []
        for task in tasks:
            for budget in ("0.05", "0.1"):
                gated = score(task, f"{policy}@{budget}")
                best = max(
                    (score(task, f"{p}@{budget}") or 0.0, p)
                    for p in HEURISTICS
                    if score(task, f"{p}@{budget}") is not None
                )
                if gated is not None:
                    verdict = "beats" if gated > best[0] else "does not beat"
                    beaten.append(
                        f"{task} at {float(budget):.0%}: {gated:.1f} {verdict} the best "
                        f"heuristic, {best[1]} {best[0]:.1f}"
                    )
        goal = "the goal" if policy == "global" else "the same test for the untied gates"
        out.append(
            f"{number}. At 5% and 10%, `{policy}` beats every heuristic ({goal}): "
            + "; ".join(beaten)
            + "."
        )
    if train_budget is None:
        return out
    long = []
    for task in tasks:
        gated, full = score(task, f"global@{train_budget}"), score(task, FULL)
        if gated is not None and full is not None:
            verdict = "beats" if gated > full else "does not beat"
            long.append(f"{task}: {gated:.1f} {verdict} full {full:.1f}")
    out.append(
        f"3. On 4x and 8x longer videos, `global` at {train_budget} tokens (a training-length "
        "prompt) beats the full cache: " + "; ".join(long) + "."
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MODELS), default="testbed")
    parser.add_argument("--limit", type=int, default=40, help="samples per task")
    parser.add_argument("--suites", default=None, help="comma-separated (default: every one)")
    parser.add_argument(
        "--heuristics", default=",".join(HEURISTICS), help="comma-separated heuristic policies"
    )
    args = parser.parse_args()
    heuristics = args.heuristics.split(",")
    suites = args.suites.split(",") if args.suites else list(SUITES)
    settings = replace(SETTINGS, model=args.model)
    out = HERE / "results" / args.model
    report = HERE / f"gates_{args.model.replace('-', '_')}.md"

    model_path(settings.model)  # fails now, with the fix, if the checkpoint is missing
    left_out = LEFT_OUT.get(args.model, {})
    tasks = [
        t for t in select_tasks("testbed") if t.generator not in left_out and t.generator in suites
    ]
    grid = cells([FULL, *heuristics, *GATED], BUDGETS, settings)
    evaluate(out, tasks, grid, settings, limit=args.limit, pictures=1)
    conversations = [t for t in tasks if t.generator in CONVERSATIONS]
    capped = cells(CONVERSATION_POLICIES, CONVERSATION_TOKENS, settings)
    evaluate(out, conversations, capped, settings, limit=args.limit, pictures=0)
    long_videos = [t for t in tasks if SUITES[t.generator].is_video and t.length > 32]
    train_budget = training_prompt_tokens(out) if long_videos else None
    if long_videos:
        extra = cells([FULL, "snapkv", "global"], [str(train_budget)], settings)
        evaluate(out, long_videos, extra, settings, limit=args.limit, pictures=0)
    results = [r for r in collect(out) if r.task.split("@")[0] in suites]
    home = model_path(settings.model)
    other = other_allocation(home)
    variant = replace(settings, allocation=other)
    out_variant = HERE / "results" / f"{args.model}-{other}"
    found = evaluate(
        out_variant,
        tasks,
        cells(["global"], BUDGETS, variant),
        variant,
        limit=args.limit,
        pictures=0,
    )
    results += [replace(r, policy=VARIANT) for r in found]
    made = [
        json.loads((home / folder / "training.json").read_text())
        for folder in ("retention_gates", "retention_gates_untied")
    ]
    (architecture,) = json.loads((home / "config.json").read_text())["architectures"]
    lines = [
        "# Learned retention gates on the test-bed",
        "",
        f"Produced by `python eval/gates_testbed.py {' '.join(sys.argv[1:])}`; "
        f"rows, report and plot in `{out.relative_to(HERE.parent)}`. Answering took "
        f"{sum(r.seconds * (r.samples + r.errors) for r in results):.0f} s in all "
        f"(`{VARIANT}`: allocation `{other}`, in `{out_variant.relative_to(HERE.parent)}`) "
        f"on {platform.machine()} CPU cores.",
        "",
        f'Model: the shipped test-bed model (`mmretain.load("{args.model}")`, '
        f"`{architecture}`). Cells: accuracy (%) on held-out samples, "
        "then the KV bytes held as a percentage of the full cache. Protections: the defaults "
        "(the question's text, inside the budget; no sinks or recent window). Budgets are "
        "fractions of the prompt, "
        "fixed from each prefill's first chunk on (a dialogue's grows turn by turn). Prompts "
        "are prefilled 32 tokens at a time, evicting after each (`chunk_tokens=32`; a video 16 "
        "frames at a time), so what was dropped before the question arrived is gone when it is "
        "answered; one new token (every answer is one word).",
        "",
        "Gates, trained on this machine: "
        + "; ".join(f"`{m['command']}` ({m['seconds']} s)" for m in made)
        + ".",
        "",
        *allocation_note(home),
        *[f"Left out: `{suite}`, since {why}." for suite, why in left_out.items()],
        *([""] if left_out else []),
        *not_run(suites, left_out),
        *goals(results, train_budget),
        "",
    ]
    for suite in (s for s in suites if s not in left_out):
        lines += [f"## {suite}", "", *NOTES.get(suite, []), *table(results, suite)]
    report.write_text("\n".join(lines) + "\n")
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
