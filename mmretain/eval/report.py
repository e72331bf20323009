"""Tables and plots from the rows of a run: how much accuracy each KV budget costs.

For every (task, policy, budget) cell: the task's headline score, that score as a percentage of
the full cache's, and the KV memory the cache held when answering (its bytes — keys, values and
per-entry metadata — over the bytes the same cache would hold with every token it saw kept; the
peak during prefill beside it). Memory is measured from the cache, never inferred from a token
count, and every layer and head is counted.

Written into the output directory: ``results.json`` (every number), ``report.md`` (a table per
suite, then each task's details) and ``SUITE_accuracy_vs_budget.png`` (score against KV memory,
one line per policy).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .grid import FULL, Cell
from .records import CellFiles, write_atomic
from .tasks import TASKS
from .testbed_tasks import testbed_tasks

_CELL_FILE = re.compile(r"^(.*?)(?:\.part\d+of\d+)?\.jsonl$")  # "snapkv@0.1.part0of2.jsonl"


@dataclass
class CellResult:
    """The numbers of one (task, policy, budget) cell."""

    task: str
    suite: str
    policy: str
    budget: str | None
    metric: str
    summary: dict[str, float]
    samples: int
    errors: int
    unparsed: int
    kv_percent: float | None
    kv_peak_percent: float | None
    seconds: float
    # Mean per-sample score in [0, 1] and its standard error, what the budget check compares.
    sample_mean: float = 0.0
    sample_stderr: float = 0.0
    restarts: int = 0  # conversations prefilled again whole (see `RetentionStats.restarts`)
    # The same policy's cell at a smaller budget that this one falls more than two standard
    # errors below: more memory, worse answers, a defect to explain.
    below_smaller_budget: str | None = None

    @property
    def score(self) -> float:
        return self.summary["score"]

    @property
    def cell(self) -> str:
        return Cell(self.policy, self.budget).name


def registered() -> dict[str, Any]:
    """Every task by name, benchmarks then the test-bed, in the order tables list them."""
    return {**TASKS, **testbed_tasks()}


def _percent(numerator: float, denominator: float) -> float | None:
    return 100 * numerator / denominator if denominator else None


def summarize(task: Any, cell: str, rows: list[dict[str, Any]]) -> CellResult:
    """One cell's numbers from its rows."""
    parsed = Cell.from_name(cell)
    answered = [row for row in rows if "error" not in row]
    summary = task.scorer.summarize(rows, task.report_by)
    scored = [float(row["score"]) for row in rows if row.get("answer") is not None]
    mean, stderr = _mean_and_stderr(scored)
    return CellResult(
        task=task.name,
        suite=task.suite,
        policy=parsed.policy,
        budget=parsed.budget,
        metric=task.scorer.headline,
        summary=summary,
        samples=sum(row.get("answer") is not None for row in rows),
        errors=len(rows) - len(answered),
        unparsed=sum("parsed" in row and row["parsed"] is None for row in answered),
        kv_percent=_percent(
            sum(r["kv_bytes"] for r in answered), sum(r["kv_full_bytes"] for r in answered)
        ),
        kv_peak_percent=_percent(
            sum(r["kv_peak_bytes"] for r in answered), sum(r["kv_full_bytes"] for r in answered)
        ),
        seconds=sum(r["seconds"] for r in rows) / len(rows) if rows else 0.0,
        sample_mean=mean,
        sample_stderr=stderr,
        restarts=sum(r.get("restarts", 0) for r in answered),
    )


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def flag_budget_inversions(results: list[CellResult]) -> None:
    """Mark each cell whose per-sample mean falls more than two standard errors (of the
    difference) below the same task and policy at a smaller budget of the same kind."""
    for cell in results:
        amount = _budget_amount(cell.budget)
        if amount is None:
            continue
        for other in results:
            smaller = _budget_amount(other.budget)
            if (
                other.task != cell.task
                or other.policy != cell.policy
                or smaller is None
                or (smaller < 1) != (amount < 1)  # fractions against fractions, tokens too
                or smaller >= amount
            ):
                continue
            gap = other.sample_mean - cell.sample_mean
            if gap > 2 * math.hypot(cell.sample_stderr, other.sample_stderr):
                cell.below_smaller_budget = other.budget
                break


def _budget_amount(budget: str | None) -> float | None:
    try:
        return float(budget) if budget is not None else None
    except ValueError:  # a byte size such as "64MiB"
        return None


def collect(out: Path, selections: dict[str, set[int]] | None = None) -> list[CellResult]:
    """Every cell found under ``out/rows`` (merged part files included); for a task named in
    ``selections``, only the rows of the samples selected (a run with a smaller ``--limit``
    into a folder that holds more)."""
    tasks = registered()
    order = {name: i for i, name in enumerate(tasks)}
    directories = [p for p in (out / "rows").glob("*") if p.is_dir() and p.name in tasks]
    results = []
    for directory in sorted(directories, key=lambda p: order[p.name]):
        task = tasks[directory.name]
        names = {_CELL_FILE.match(p.name).group(1) for p in directory.glob("*.jsonl")}
        for name in sorted(names, key=_cell_order):
            rows = CellFiles(directory, name).rows()
            if selections is not None and directory.name in selections:
                rows = [row for row in rows if row["index"] in selections[directory.name]]
            if rows:
                results.append(summarize(task, name, rows))
    flag_budget_inversions(results)
    return results


def _cell_order(name: str) -> tuple:
    """The full cache first, then by policy, numeric budgets in increasing order."""
    cell = Cell.from_name(name)
    amount = _budget_amount(cell.budget or "0")
    return (
        cell.policy != FULL,
        cell.policy,
        math.inf if amount is None else amount,
        cell.budget or "",
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _of_full(results: list[CellResult]) -> Callable[[CellResult], float | None]:
    """A cell's score as a percentage of its task's full-cache score among ``results`` (None
    without one)."""
    full = {r.task: r.score for r in results if r.policy == FULL}
    return lambda r: _percent(r.score, full[r.task]) if r.task in full else None


def terminal_table(results: list[CellResult]) -> str:
    """The cells' headline figures as aligned plain text, for the end of a run."""
    of_full = _of_full(results)
    header = ("task", "policy", "budget", "score", "% of full", "KV held %", "samples")
    rows = [
        (
            r.task,
            r.policy,
            r.budget or "—",
            _fmt(r.score) + (" ▼" if r.below_smaller_budget else ""),
            _fmt(of_full(r)),
            _fmt(r.kv_percent),
            str(r.samples),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    )


def markdown(results: list[CellResult], out: Path) -> str:
    """A table per suite (score, % of full, KV memory per cell), then each task's details."""
    of_full = _of_full(results)
    lines = ["# Evaluation under a KV-cache budget", ""]
    settings = out / "run.json"
    if settings.is_file():
        recorded = json.loads(settings.read_text())["settings"]
        lines += [
            "Settings: " + ", ".join(f"{k}={v}" for k, v in recorded.items() if v is not None),
            "",
        ]
    lines += [
        "Score: the task's headline metric. % of full: score over the full-cache score on the",
        "same samples. KV held: bytes the cache held when answering, over the bytes it would",
        "hold with every token it saw kept (all layers and heads, summed over samples); KV peak:",
        "the largest it grew during a sample, on the same scale. Restarts: conversations the",
        "chat had to prefill again whole (0 when every turn carried the cache over). A cell",
        "marked ▼ falls more than two standard errors below the same policy at the smaller",
        "budget it names.",
    ]
    by_suite: dict[str, list[CellResult]] = defaultdict(list)
    for result in results:
        by_suite[result.suite].append(result)
    for suite, rows in by_suite.items():
        lines += [
            "",
            f"## {suite} suite",
            "",
            f"![accuracy against KV budget]({suite}_accuracy_vs_budget.png)",
            "",
            "| task | metric | policy | budget | score | % of full | KV held % | KV peak % "
            "| samples | unparsed | errors | restarts | s/sample |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            flag = f" ▼ below {r.below_smaller_budget}" if r.below_smaller_budget else ""
            lines.append(
                f"| {r.task} | {r.metric} | {r.policy} | {r.budget or '—'} | {_fmt(r.score)}"
                f"{flag} | {_fmt(of_full(r))} | {_fmt(r.kv_percent)} | {_fmt(r.kv_peak_percent)} "
                f"| {r.samples} | {r.unparsed} | {r.errors} | {r.restarts} | {r.seconds:.2f} |"
            )
    for task, rows in _by_task(results).items():
        keys = [k for k in rows[0].summary if k != "score"]
        if not keys:
            continue
        lines += ["", f"### {task}", "", "| cell | " + " | ".join(keys) + " |"]
        lines.append("|---|" + "---:|" * len(keys))
        for r in rows:
            values = " | ".join(_fmt(r.summary.get(k)) for k in keys)
            lines.append(f"| {r.cell} | {values} |")
    pictures = sorted((out / "pictures").glob("*/*/*.png"))
    if pictures:
        lines += ["", "## Retention pictures", ""]
        lines += [f"- [{p.relative_to(out)}]({p.relative_to(out)})" for p in pictures]
    return "\n".join(lines) + "\n"


def _by_task(results: list[CellResult]) -> dict[str, list[CellResult]]:
    grouped: dict[str, list[CellResult]] = defaultdict(list)
    for result in results:
        grouped[result.task].append(result)
    return dict(grouped)


def plot(results: list[CellResult], path: Path) -> None:
    """Score against KV memory held, one panel per task, one line per policy; the full cache is
    the dashed line."""
    from matplotlib.figure import Figure

    tasks = _by_task(results)
    columns = min(3, len(tasks))
    count = -(-len(tasks) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * count), layout="constrained")
    panels = figure.subplots(count, columns, squeeze=False).ravel()
    for axes, (task, rows) in zip(panels, tasks.items(), strict=False):
        policies: dict[str, list[CellResult]] = defaultdict(list)
        for r in rows:
            policies[r.policy].append(r)
        for policy, cells in policies.items():
            points = sorted((r.kv_percent or 0.0, r.score) for r in cells)
            if policy == FULL:
                axes.axhline(points[0][1], color="black", linestyle="--", linewidth=1)
                axes.plot(*zip(*points, strict=True), "k*", label="full cache")
            else:
                axes.plot(*zip(*points, strict=True), marker="o", label=policy)
        axes.set_title(f"{task} ({rows[0].metric})", fontsize=10)
        axes.set_xlabel("KV memory held (% of full)")
        axes.set_ylabel("score")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    for axes in panels[len(tasks) :]:
        axes.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def write_report(out: Path, selections: dict[str, set[int]] | None = None) -> list[CellResult]:
    """Summarise every cell under ``out`` into results.json, report.md and one plot per suite
    (the rows of ``selections`` only, for the tasks it names; see `collect`)."""
    results = collect(out, selections)
    payload = [dict(asdict(r), cell=r.cell) for r in results]
    write_atomic(out / "results.json", json.dumps(payload, indent=1) + "\n")
    write_atomic(out / "report.md", markdown(results, out))
    suites: dict[str, list[CellResult]] = defaultdict(list)
    for result in results:
        suites[result.suite].append(result)
    for suite, rows in suites.items():
        plot(rows, out / f"{suite}_accuracy_vs_budget.png")
    return results
