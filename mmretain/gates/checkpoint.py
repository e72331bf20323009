"""Training checkpoints: gates, optimizer state and step, in safetensors and JSON only.

``OUT/checkpoints/step-000200/`` holds the gates (`RetentionGates.save_pretrained`),
``optimizer.safetensors`` (the optimizer's tensors) and ``trainer_state.json`` (step, run
settings and the optimizer's other state). A checkpoint is written under a temporary name and
renamed when complete, then older ones are removed, so a crash leaves the last good one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .retention_gates import RetentionGates

CHECKPOINTS = "checkpoints"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"step-(\d+)")


def save_checkpoint(
    out: Path,
    step: int,
    gates: RetentionGates,
    optimizer: torch.optim.Optimizer,
    settings: dict[str, Any],
) -> Path:
    """Write the checkpoint of ``step`` under ``out`` and drop the older ones."""
    root = out / CHECKPOINTS
    final = root / f"step-{step:06d}"
    partial = root / f"{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    gates.save_pretrained(partial)
    tensors, other = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, partial / OPTIMIZER_FILE)
    record = {"step": step, "settings": settings, "optimizer": other}
    (partial / STATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for older in root.iterdir():
        match = _STEP_DIR.fullmatch(older.name)
        if match and int(match.group(1)) < step:
            shutil.rmtree(older)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The most advanced complete checkpoint under ``out``, or None."""
    root = out / CHECKPOINTS
    steps = [
        (int(match.group(1)), path)
        for path in (root.iterdir() if root.is_dir() else [])
        if (match := _STEP_DIR.fullmatch(path.name))
    ]
    return max(steps)[1] if steps else None


def load_checkpoint(
    checkpoint: Path, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, Any]]:
    """Restore ``optimizer`` from ``checkpoint``; returns its step and run settings."""
    record = json.loads((checkpoint / STATE_FILE).read_text())
    tensors = load_file(checkpoint / OPTIMIZER_FILE)
    other = record["optimizer"]
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in other["state"].items()}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": other["param_groups"]})
    return record["step"], record["settings"]


def _split_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors keyed ``"<param index>.<name>"`` for safetensors; everything else for JSON."""
    tensors: dict[str, torch.Tensor] = {}
    other_state: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        other_state[str(index)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                other_state[str(index)][key] = value
    return tensors, {"state": other_state, "param_groups": state_dict["param_groups"]}
