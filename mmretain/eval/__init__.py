"""Evaluation under a KV budget: benchmark tasks, their metrics, a resumable runner, reports.

    from mmretain.eval import RunSettings, cells, evaluate, select_tasks
    settings = RunSettings(model="Qwen/Qwen2-VL-2B-Instruct")
    evaluate(Path("runs/vqa"), select_tasks("vqa", ["pope"]), cells(["full", "snapkv"], ["0.1"],
             settings), settings, limit=500)

The command line is `mmretain eval` (see `mmretain.eval.cli`).
"""

from .cells import Cell, RunSettings, cells
from .report import CellResult, write_report
from .runner import Locations, Shard, evaluate
from .tasks import SUITES, TASKS, Task, select_tasks

__all__ = [
    "SUITES",
    "TASKS",
    "Cell",
    "CellResult",
    "Locations",
    "RunSettings",
    "Shard",
    "Task",
    "cells",
    "evaluate",
    "select_tasks",
    "write_report",
]
