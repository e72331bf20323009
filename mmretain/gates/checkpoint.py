"""Training checkpoints: gates, optimizer state and step, in safetensors and JSON only.

``OUT/checkpoints/step-000200/`` holds the gates (`RetentionGates.save_pretrained`),
``optimizer.safetensors`` (the optimizer's tensors) and ``trainer_state.json`` (step, run
settings, the optimizer's other state, and the size and SHA-256 of every other file). A
checkpoint is written under a temporary name and renamed when complete, then older ones are
removed, so a crash leaves the last good one; a file cut short or damaged since is found by its
size and hash before training resumes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import GatesTrainingError, MMRetainError
from .retention_gates import RetentionGates

CHECKPOINTS = "checkpoints"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"step-(\d+)")
# Older checkpoints are removed as a new one is saved: a damaged one is replaced by training again.
_FIX = "delete {} and train again without --resume, or train into a new --out"


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
    files = {path.name: _fingerprint(path) for path in sorted(partial.iterdir())}
    record = {"step": step, "settings": settings, "optimizer": other, "files": files}
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


def load_gates(checkpoint: Path, model: torch.nn.Module) -> RetentionGates:
    """The gates of ``checkpoint`` (checked to fit ``model``), once its files are verified."""
    _verify(checkpoint, _state(checkpoint))
    try:
        return RetentionGates.from_pretrained(checkpoint, model=model)
    except MMRetainError:
        raise
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as error:
        raise _unusable(checkpoint, "its retention gates", error) from None


def load_checkpoint(
    checkpoint: Path, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, Any]]:
    """Restore ``optimizer`` from ``checkpoint``; returns its step and run settings."""
    record = _state(checkpoint)
    _verify(checkpoint, record)
    try:
        tensors = load_file(checkpoint / OPTIMIZER_FILE)
        other = record["optimizer"]
        state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in other["state"].items()}
        for name, tensor in tensors.items():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
        optimizer.load_state_dict({"state": state, "param_groups": other["param_groups"]})
    except (SafetensorError, OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        where = f"{OPTIMIZER_FILE} and the optimizer state in {STATE_FILE}"
        raise _unusable(checkpoint, where, error) from None
    return record["step"], record["settings"]


def _state(checkpoint: Path) -> dict[str, Any]:
    """``trainer_state.json`` of ``checkpoint``, with its step, settings and optimizer state."""
    path = checkpoint / STATE_FILE
    try:
        record = json.loads(path.read_text())
        fields = (record["step"], record["settings"], record["optimizer"], record.get("files", {}))
        step, settings, optimizer, files = fields
        if not (isinstance(step, int) and step >= 0):
            raise ValueError(f"step {step!r} is not a count of steps")
        if not all(isinstance(part, dict) for part in (settings, optimizer, files)):
            raise ValueError("settings, optimizer and files must be JSON objects")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise _unusable(checkpoint, STATE_FILE, error) from None
    return record


def _verify(checkpoint: Path, record: dict[str, Any]) -> None:
    """Every file the checkpoint listed when it was saved has the size and hash it had then.

    Checkpoints saved before files were listed have nothing to verify."""
    for name, saved in record.get("files", {}).items():
        path = checkpoint / name
        found = _fingerprint(path) if path.is_file() else None
        if found != saved:
            state = "is missing" if found is None else "is cut short or damaged (size or hash)"
            raise GatesTrainingError(
                f"cannot resume from {checkpoint}: {path} {state}; " + _FIX.format(checkpoint)
            )


def _unusable(checkpoint: Path, what: str, error: BaseException) -> GatesTrainingError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return GatesTrainingError(
        f"cannot resume from {checkpoint}: {what} cannot be read ({reason}); "
        + _FIX.format(checkpoint)
    )


def _fingerprint(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


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
