"""One measurement in a child process of its own, so its memory and warm-up are its own."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import Any


def run_json(command: list[str]) -> dict[str, Any]:
    """Run ``command`` (a script re-invoking itself, or another interpreter) and return the
    JSON object on the last line it prints; a failed child raises with its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def header(script: str, setting: str) -> str:
    """The first line of a results file: the command as run, the date, the versions and the
    machine, then ``setting`` (what else the numbers depend on)."""
    import torch
    import transformers

    command = " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])
    return (
        f"Command: `{command}` | date: {time.strftime('%Y-%m-%d %H:%M %Z')} | "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()} | machine: {os.cpu_count()} CPU cores "
        f"({platform.machine()}), {setting}"
    )


def table_head(columns: tuple[str, ...], text_columns: int) -> str:
    """A markdown table's header and rule; the first ``text_columns`` are left-aligned."""
    rule = "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(columns)))
    return "| " + " | ".join(columns) + " |\n" + rule + "|"
