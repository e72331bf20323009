"""One adapter per model family; `adapter_for` picks the one that fits a model."""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from .base import Adapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen2_vl import Qwen2VLAdapter
from .qwen3_vl import Qwen3VLAdapter
from .text import TextAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    Qwen2VLAdapter,
    Qwen2_5_VLAdapter,
    Qwen3VLAdapter,
    TextAdapter,
)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s family, or `UnsupportedModelError` naming the supported ones."""
    for cls in ADAPTERS:
        if cls.matches(model):
            return cls(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    supported = "; ".join(cls.family for cls in ADAPTERS)
    raise UnsupportedModelError(
        f"{type(model).__name__} (model_type={model_type!r}) is not supported. "
        f"Supported families: {supported}. Load one of those with transformers and pass it in."
    )


__all__ = ["ADAPTERS", "Adapter", "adapter_for"]
