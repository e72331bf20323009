"""The checkpoints shipped inside the package, by name: the test-bed models and their CLIP.

They are trained by `mmretain.testbed`; loading one by name needs only this module, so the core
(`location`, `relevance`) reaches them without importing the test-bed's suites or training.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError, UnknownTestbedModelError

MODELS_DIR = Path(__file__).parent / "testbed" / "models"
# Public name -> directory under models/ (one per architecture).
MODELS: dict[str, str] = {"testbed": "qwen2vl", "testbed-llava": "llava-onevision"}


def model_path(name: str = "testbed") -> Path:
    """The directory of a shipped test-bed checkpoint: "testbed" (Qwen2-VL) or "testbed-llava"."""
    if name not in MODELS:
        raise UnknownTestbedModelError(
            f"no test-bed model named {name!r}; shipped: {', '.join(MODELS)}"
        )
    path = MODELS_DIR / MODELS[name]
    if not (path / "model.safetensors").is_file():
        raise ModelLoadError(
            f"the {name!r} checkpoint is missing from {path}; reinstall mmretain, or train it with "
            f"`mmretain testbed train --arch {MODELS[name]} --out {path}`"
        )
    return path


def clip_path() -> Path:
    """The directory of the shipped test-bed open_clip model (`mmretain.relevance`)."""
    path = MODELS_DIR / "clip"
    if not (path / "open_clip_model.safetensors").is_file():
        raise ModelLoadError(
            f"the test-bed CLIP is missing from {path}; reinstall mmretain, or train it with "
            f"`mmretain testbed train-clip --out {path}`"
        )
    return path
