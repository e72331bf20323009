"""One adapter per model family; `adapter_for` picks the one that fits a model."""

from __future__ import annotations

from typing import Any

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


def adapter_class(config: Any, name: str) -> type[Adapter]:
    """The adapter class for a model ``config``'s family (``name`` says which model, in the
    error), or `UnsupportedModelError` naming the supported families."""
    model_type = getattr(config, "model_type", None)
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    supported = "; ".join(cls.family for cls in ADAPTERS)
    raise UnsupportedModelError(
        f"{name} (model_type={model_type!r}) is not supported. "
        f"Supported families: {supported}. Load one of those with transformers and pass it in."
    )


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s family, or `UnsupportedModelError` naming the supported ones."""
    return adapter_class(getattr(model, "config", None), type(model).__name__)(model)


__all__ = ["ADAPTERS", "Adapter", "adapter_class", "adapter_for"]
