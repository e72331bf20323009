"""Retention policies, by name. Each file is one family of scores."""

from . import attention, simple
from . import gates as gates  # registers the gated policies: trimkv, global
from .base import POLICIES, LayerView, RetentionPolicy, build_policy, register

__all__ = [
    "POLICIES",
    "LayerView",
    "RetentionPolicy",
    "attention",
    "build_policy",
    "register",
    "simple",
]
