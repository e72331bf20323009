"""One measurement in a child process of its own, so its memory and warm-up are its own."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def run_json(command: list[str]) -> dict[str, Any]:
    """Run ``command`` (a script re-invoking itself, or another interpreter) and return the
    JSON object on the last line it prints; a failed child raises with its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
