"""examples/evaluate.py runs a benchmark task from its local copy on a tiny checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from checkpoints import write_qwen2_vl

ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_example_prints_the_budget_table(tmp_path):
    checkpoint = write_qwen2_vl(tmp_path / "qwen2_vl")
    task = f"vqav2={ROOT / 'tests' / 'data' / 'eval' / 'vqav2'}"
    args = ["--model", str(checkpoint), "--task", task, "--policies", "full,snapkv"]
    args += ["--budgets", "0.25", "--limit", "2"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "evaluate.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["cell", "score", "%", "of", "full", "KV", "held", "%"]
    assert [line.split()[0] for line in lines[1:]] == ["full", "snapkv@0.25"]
