"""Where a checkpoint loads from (a shipped test-bed name, a local directory or a hub id), and
loading its model.

A hub id is tried online only when the hub answers within seconds. Without a network,
huggingface_hub retries each file for minutes before failing; here a model already in the hub
cache loads offline at once, and one that is not fails at once, saying what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError
from .shipped import model_path

if TYPE_CHECKING:
    import torch

HUB_TIMEOUT_S = 3.0


def hub_reachable() -> bool:
    """Whether the hub endpoint answers at all (through the proxies huggingface_hub uses)."""
    from huggingface_hub import constants

    return not constants.HF_HUB_OFFLINE and _answers(constants.ENDPOINT)


@lru_cache
def _answers(endpoint: str) -> bool:
    # Asked once per process and endpoint: a command resolves its model more than once.
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_TIMEOUT_S)
    except Exception:  # any failure to connect means the same thing here: no hub
        return False
    return True


def checkpoint_location(name: str | Path) -> tuple[str, bool]:
    """Where a checkpoint loads from, and whether to load it without the network.

    "testbed" and "testbed-llava" name the tiny models shipped with mmretain. A name that
    reads as a path (absolute, or starting with "." or "~") must be an existing directory. A hub
    id loads online when the hub is reachable, else from the hub cache.
    """
    path = str(name)
    if path.startswith("testbed") and not Path(path).exists():
        path = str(model_path(path))
    directory = Path(path).expanduser()
    if directory.is_dir():
        return str(directory), True
    if directory.is_absolute() or path.startswith((".", "~")) or directory.exists():
        raise ModelLoadError(
            f"no model directory at {path!r}; give a directory written by save_pretrained, or a "
            "hub id such as Qwen/Qwen2-VL-2B-Instruct"
        )
    if hub_reachable():
        return path, False
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        return path, True
    raise ModelLoadError(
        f"{path!r} is not a local directory nor in the hub cache ({constants.HF_HUB_CACHE}), "
        f"and the hub ({constants.ENDPOINT}) cannot be reached; give a directory written by "
        f"save_pretrained, or download it where there is a network (`hf download {path}`) and "
        "point HF_HOME at that cache"
    )


@contextmanager
def load_errors(path: str) -> Iterator[None]:
    """transformers' loading errors as one `ModelLoadError` naming the fix."""
    try:
        yield
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(
            f"cannot load a model from {path!r} ({reason}); "
            "give a local directory written by save_pretrained (safetensors) or a reachable hub id"
        ) from error


def load_model(
    name: str | Path,
    *,
    device_map: str | dict[str, Any] | None = None,
    dtype: torch.dtype | str = "auto",
) -> torch.nn.Module:
    """A checkpoint's model, from safetensors only: image-text-to-text when the family has
    one, else a causal LM. ``device_map`` (default: none, so the CPU) and ``dtype`` (default
    "auto": the checkpoint's) are those of ``from_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    path, local = checkpoint_location(name)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"use_safetensors": True, "device_map": device_map, "dtype": dtype}
    if local:
        kwargs["local_files_only"] = True
    with load_errors(path):
        try:
            return AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        except ValueError:
            return AutoModelForCausalLM.from_pretrained(path, **kwargs)
