"""The resumable runner: every (task, policy, budget) cell on the same samples, one row each.

Layout of an output directory::

    run.json                          settings the rows depend on (checked when resuming)
    rows/TASK/POLICY@BUDGET.jsonl     one JSON row per sample ("full" for the full cache)
    pictures/TASK/POLICY@BUDGET/N.png retention pictures of the first samples
    results.json, report.md, SUITE_accuracy_vs_budget.png   (see `mmretain.eval.report`)

A row is appended and fsync'd as soon as its sample finishes, so rerunning the same command
after a crash (even ``kill -9``) runs only the samples that have no row; nothing is recomputed
and nothing is lost. Under ``accelerate launch`` each process takes every N-th sample of each
cell and appends to its own part file; the main process merges them when all are done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api import Answer, RetainedVLM, load
from ..cache import RetentionStats
from ..errors import (
    GatesMismatchError,
    GatesNotFoundError,
    ModelLoadError,
    RetentionStateError,
    RunFailedError,
    RunMismatchError,
    UnsupportedModelError,
)
from . import report, retention_map
from .grid import FULL, Cell, RunSettings
from .records import CellFiles, RowWriter, write_atomic
from .sample import EvalSample

# Errors of the model or the policy, not of a sample: every sample would fail the same way.
FATAL = (GatesMismatchError, GatesNotFoundError, ModelLoadError, RetentionStateError)
# Failures in a row at the start of a cell that mean something is wrong with the run itself.
SYSTEMATIC_FAILURES = 8
FATAL += (UnsupportedModelError,)
# New tokens for the replies to earlier turns of a conversation (only the last is scored).
EARLIER_TURN_TOKENS = 16


@dataclass(frozen=True)
class Shard:
    """This process's share of every cell: samples ``rank``, ``rank + world``, …"""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @classmethod
    def current(cls) -> Shard:
        """From accelerate's process state (one process when not launched by accelerate)."""
        import torch
        from accelerate import PartialState

        # accelerate groups processes on a machine without GPUs only when told the run is on
        # CPU; several processes launched there can only mean that.
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        state = PartialState(cpu=launched and not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, str(state.device))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait_for_everyone(self) -> None:
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def check_settings(out: Path, settings: RunSettings, shard: Shard) -> None:
    """Record the settings of a new run; refuse to add rows made otherwise to an old one."""
    path = out / "run.json"
    wanted = dataclasses.asdict(settings)
    if path.is_file():
        recorded = json.loads(path.read_text())["settings"]
        changed = {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}
        if changed:
            diff = "; ".join(
                f"{k}: {old!r} there, {new!r} now" for k, (old, new) in changed.items()
            )
            raise RunMismatchError(
                f"{out} holds rows of a run with other settings ({diff}); rerun with the same "
                "settings to resume it, or pass another --out"
            )
    elif shard.is_main:
        write_atomic(path, json.dumps({"settings": wanted}, indent=1) + "\n")


@dataclass(frozen=True)
class Locations:
    """Where datasets and videos are: a path per task, a folder of local copies, a video root."""

    paths: dict[str, Path] = dataclasses.field(default_factory=dict)
    data_dir: Path | None = None
    video_dir: Path | None = None


def evaluate(
    out: Path,
    tasks: list[Any],
    grid: list[Cell],
    settings: RunSettings,
    *,
    limit: int | None = None,
    locations: Locations | None = None,
    shard: Shard | None = None,
    pictures: int = 1,
    progress: bool = True,
) -> list[report.CellResult] | None:
    """Run (or resume) every cell of every task into ``out``, then report.

    Every dataset is opened and every video checked before the first sample runs. Returns the
    cells' results on the main process, None on the others.
    """
    locations = locations or Locations()
    shard = shard or Shard.current()
    opened = [
        (task, task.open(locations.paths.get(task.name), locations.data_dir, locations.video_dir))
        for task in tasks
    ]
    selections = [data.selection(limit) for _, data in opened]
    for (_, data), selection in zip(opened, selections, strict=True):
        data.check(selection)  # every video there, before the first sample runs
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings, shard)
    runner = Runner(out, settings, shard, pictures, progress)
    for (task, data), selection in zip(opened, selections, strict=True):
        for cell in grid:
            runner.run_cell(task, data, selection, cell)
    shard.wait_for_everyone()
    if not shard.is_main:
        return None
    for task in tasks:
        for cell in grid:
            CellFiles(out / "rows" / task.name, cell.name).merge()
    chosen = {task.name: set(selection) for task, selection in zip(tasks, selections, strict=True)}
    return report.write_report(out, chosen)


class Runner:
    """Runs cells of tasks into an output directory, resuming whatever is already there."""

    def __init__(
        self,
        out: Path,
        settings: RunSettings,
        shard: Shard | None = None,
        pictures: int = 1,
        progress: bool = True,
    ):
        self.out = out
        self.settings = settings
        self.shard = shard or Shard()
        self.pictures = pictures
        self.progress = progress and self.shard.is_main
        self._base = None  # the loaded model, shared by every cell

    def run_cell(self, task: Any, data: Any, selection: list[int], cell: Cell) -> None:
        """The samples of ``selection`` that are this process's and have no row yet."""
        from tqdm import tqdm

        files = CellFiles(self.out / "rows" / task.name, cell.name)
        done = files.done()
        mine = selection[self.shard.rank :: self.shard.world]
        pending = [i for i in mine if i not in done]
        pictured = set(selection[: self.pictures])
        bar = tqdm(
            total=len(mine),
            initial=len(mine) - len(pending),
            desc=f"{task.name} {cell.name}",
            unit="sample",
            file=sys.stderr,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        if pending:
            vlm = self._vlm(cell)
            # In a cell with no row yet, error rows are held back while every sample so far
            # failed: when the first ones all fail the run stops (a bug, not bad samples) and
            # leaves them to be run again. A cell that already has rows is past that test.
            held: list[dict[str, Any]] | None = None if done else []
            stop_after = min(SYSTEMATIC_FAILURES, len(pending))
            with RowWriter(files.part(self.shard.rank, self.shard.world)) as writer:
                for index in pending:
                    row = self._row(task, data, index, vlm, cell, index in pictured)
                    if "error" in row:
                        bar.write(f"{task.name} {cell.name} sample {index}: {row['error']}")
                    if held is not None and "error" in row:
                        held.append(row)
                        if len(held) == stop_after:
                            bar.close()
                            raise RunFailedError(
                                f"the first {stop_after} samples of {task.name} {cell.name} all "
                                f"failed, so the run stopped; the first: {held[0]['error']}"
                            )
                    else:
                        for earlier in held or ():
                            writer.append(earlier)
                        held = None
                        writer.append(row)
                    bar.update()
        bar.close()

    def _vlm(self, cell: Cell) -> RetainedVLM:
        if self._base is None:
            settings = self.settings
            self._base = load(
                settings.model,
                policy=FULL,
                budget=1.0,
                device_map=self.shard.device,
                dtype=settings.dtype or "auto",
            )
        vlm = RetainedVLM(self._base.model, self._base.processor, cell.config(self.settings))
        # Policies bind when their hooks go in (gates load then): fail now, not on each sample.
        vlm.run.install()
        vlm.run.remove()
        return vlm

    def _row(self, task, data, index: int, vlm, cell: Cell, picture: bool) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            reference = data.reference(index)
        except Exception as error:  # a malformed row: recorded, and the run goes on
            return _error_row(index, None, error, start)
        try:
            sample = data.sample(index, reference, self.settings.media)
            answer = self._predict(vlm, sample, task)
        except FATAL:
            raise
        except Exception as error:  # bad media, or a model that cannot take this sample
            return _error_row(index, reference, error, start)
        seconds = time.perf_counter() - start
        if picture and (sample.video is not None or sample.images):
            # Drawn before the row is written: a crash here reruns the sample, picture and all.
            self._picture(task, cell, vlm, sample)
        scored = task.scorer.score(answer.text, reference.answer, reference.options)
        row = {
            "index": index,
            "id": reference.id,
            "prediction": answer.text,
            "score": scored.score,
            "answer": reference.answer,
            "groups": reference.groups,
            **retention_fields(answer.stats),
            "seconds": round(seconds, 3),
        }
        if task.scorer.parses:
            row["parsed"] = scored.parsed
        return row

    def _predict(self, vlm: RetainedVLM, sample: EvalSample, task: Any) -> Answer:
        tokens = self.settings.max_new_tokens or task.max_new_tokens
        if sample.video is not None:
            return vlm.answer_video(
                sample.video,
                sample.prompt,
                chunk_frames=self.settings.chunk_frames,
                max_new_tokens=tokens,
            )[0]
        vlm.reset()
        # A conversation arrives turn by turn, as in a chat: each earlier turn is prefilled and
        # answered (and evicted from) before the next one, only the latest turn's text is
        # protected, and the model's own replies stand for the recorded ones, so the cache
        # carries over from turn to turn as a user's chat does (`stats.restarts` says if not).
        conversation: list[dict[str, Any]] = []
        for message in sample.messages[:-1]:
            answers_user = conversation and conversation[-1]["role"] == "user"
            if message["role"] == "assistant" and answers_user:
                reply = vlm.chat(conversation, max_new_tokens=EARLIER_TURN_TOKENS)
                message = {**message, "content": _as_content(reply.text, message["content"])}
            conversation.append(message)
        return vlm.chat([*conversation, sample.messages[-1]], max_new_tokens=tokens)

    def _picture(self, task, cell: Cell, vlm, sample: EvalSample) -> None:
        path = self.out / "pictures" / task.name / cell.name / f"{sample.index}.png"
        title = f"{task.name} · {cell.name} · sample {sample.reference.id}"
        if sample.video is not None:
            grid = retention_map.video_grid(vlm, sample)
            retention_map.save_video_strip(path, sample.video, grid, title)
        else:
            grid = retention_map.image_grid(vlm, sample)
            retention_map.save_image_picture(path, sample.images[0], grid, title)


def _as_content(text: str, like: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """``text`` as a message's content, in the form ``like`` has (a string or parts)."""
    return text if isinstance(like, str) else [{"type": "text", "text": text}]


def retention_fields(stats: RetentionStats) -> dict[str, Any]:
    """What the cache held for one answer, as rows record it: tokens seen and kept per modality
    (a token kept in every layer and head counts once), KV bytes held, the peak, the bytes
    of a cache that kept every token, and how often the conversation had to restart."""
    return {
        "tokens_seen": {k: v for k, v in stats.seen_by_modality.items() if v},
        "tokens_kept": {k: round(v, 2) for k, v in stats.tokens_kept.items() if v},
        "kv_bytes": stats.bytes_held,
        "kv_peak_bytes": stats.peak_bytes_held,
        "kv_full_bytes": stats.bytes_full_cache,
        "restarts": stats.restarts,
    }


def _error_row(index: int, reference, error: Exception, start: float) -> dict[str, Any]:
    return {
        "index": index,
        "id": reference.id if reference else str(index),
        "error": f"{type(error).__name__}: {error}",
        "score": 0.0,
        "answer": reference.answer if reference else None,
        "groups": reference.groups if reference else {},
        "seconds": round(time.perf_counter() - start, 3),
    }
