"""Text-only causal LMs (Llama, Qwen2, ...): every prompt token is text."""

from __future__ import annotations

from .base import Adapter


class TextAdapter(Adapter):
    family = "text (Llama, Qwen2 causal LMs)"
    model_types = ("llama", "qwen2", "mistral", "qwen3")
