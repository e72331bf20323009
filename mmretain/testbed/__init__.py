"""The test-bed: procedural multimodal suites, and tiny models trained on them from scratch.

The models ship inside the package as hub-style checkpoints, so everything runs offline::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    path = model_path("testbed")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError, UnknownTestbedModelError
from ..lazy import lazy_exports
from .suites import SUITES, Sample, make_sample, samples

if TYPE_CHECKING:
    from .batching import training_batches

MODELS_DIR = Path(__file__).parent / "models"
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


# Training batches are torch tensors: imported on first use, so the suites load without torch.
__getattr__, __dir__ = lazy_exports(__name__, {"training_batches": "batching"})
__all__ = [
    "MODELS",
    "SUITES",
    "Sample",
    "clip_path",
    "make_sample",
    "model_path",
    "samples",
    "training_batches",
]
