"""Every script in examples/ runs on the tiny models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return done.stdout


def test_retain_generate_example_compares_policies():
    out = run_example("retain_generate.py", "--budget", "24")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["full"][1] == "True"  # no eviction: the unmodified model's answer
    assert set(rows) >= {"full", "snapkv", "h2o", "visionzip"}
    assert all(row[2].startswith("31/") for name, row in rows.items() if name != "full")
