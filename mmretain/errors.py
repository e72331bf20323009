"""Typed errors: every user-facing failure says what was wrong and how to fix it."""

from __future__ import annotations


class MMRetainError(Exception):
    """Base class of every error mmretain raises on purpose."""


class UnsupportedModelError(MMRetainError, TypeError):
    """The model is not one of the families mmretain has an adapter for."""


class UnknownPolicyError(MMRetainError, KeyError):
    """A policy name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RetentionStateError(MMRetainError, RuntimeError):
    """A cache or run used outside the context that makes it valid."""
