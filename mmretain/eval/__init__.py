"""Evaluation under a KV budget: benchmark tasks, their metrics, a resumable runner, reports.

    from mmretain.eval import RunSettings, cells, evaluate, select_tasks
    settings = RunSettings(model="Qwen/Qwen2-VL-2B-Instruct")
    evaluate(Path("runs/vqa"), select_tasks("vqa", ["pope"]), cells(["full", "snapkv"], ["0.1"],
             settings), settings, limit=500)

The command line is `mmretain eval` (see `mmretain.eval.cli`).
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "SUITES": "tasks",
    "TASKS": "tasks",
    "Cell": "grid",
    "CellResult": "report",
    "Locations": "runner",
    "RunSettings": "grid",
    "Shard": "runner",
    "Task": "tasks",
    "cells": "grid",
    "evaluate": "runner",
    "select_tasks": "tasks",
    "write_report": "report",
}
if TYPE_CHECKING:
    from .grid import Cell, RunSettings, cells
    from .report import CellResult, write_report
    from .runner import Locations, Shard, evaluate
    from .tasks import SUITES, TASKS, Task, select_tasks

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
