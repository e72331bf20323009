"""The test-bed: procedural multimodal suites, and tiny models trained on them from scratch.

The models ship inside the package as hub-style checkpoints, so everything runs offline::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    path = model_path("testbed")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports
from ..shipped import MODELS, MODELS_DIR, clip_path, model_path
from .suites import SUITES, Sample, make_sample, samples

if TYPE_CHECKING:
    from .batching import training_batches

# Training batches are torch tensors: imported on first use, so the suites load without torch.
__getattr__, __dir__ = lazy_exports(__name__, {"training_batches": "batching"})
__all__ = [
    "MODELS",
    "MODELS_DIR",
    "SUITES",
    "Sample",
    "clip_path",
    "make_sample",
    "model_path",
    "samples",
    "training_batches",
]
