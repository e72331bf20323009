"""What a retention policy is, what it is handed, and the registry that names policies."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ..cache import EMPTY
from ..errors import ConfigError, UnknownPolicyError


@dataclass
class LayerView:
    """One layer of the cache as a policy sees it when it scores entries.

    Lists are indexed by KV head; tensors are [batch, L_h] (keys [batch, L_h, d]).
    ``window`` holds the post-RoPE queries of the latest tokens [batch, heads, W, d] with their
    positions [W]; it is None when the policy asks for no window.
    """

    layer: int
    keys: list[torch.Tensor]
    positions: list[torch.Tensor]
    state: list[torch.Tensor]
    modality: list[torch.Tensor]
    window: torch.Tensor | None
    window_positions: torch.Tensor | None
    scaling: float
    tokens_seen: int
    # The sequence's question relevance by position (`RetentionCache.position_relevance`).
    relevance: torch.Tensor | None = None

    @property
    def n_kv_heads(self) -> int:
        return len(self.keys)

    def empty(self, h: int) -> torch.Tensor:
        return self.positions[h] == EMPTY

    def window_attention(self, h: int) -> torch.Tensor:
        """Softmax attention of the window queries of KV head ``h``'s query group over its entries.

        Returns [batch, group, W, L_h]; recomputed from q and k, so the model keeps SDPA.
        """
        if self.window is None:
            raise ValueError("this policy asked for no query window")
        group = self.window.shape[1] // self.n_kv_heads
        queries = self.window[:, h * group : (h + 1) * group].float()
        return attention_probs(
            queries, self.keys[h].float(), self.positions[h], self.window_positions, self.scaling
        )


def attention_probs(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_positions: torch.Tensor,
    query_positions: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Causal softmax of queries [b, g, q, d] over keys [b, L, d]; empty slots get zero."""
    logits = torch.einsum("bgqd,bld->bgql", queries, keys) * scaling
    allowed = (key_positions[:, None, None, :] <= query_positions[None, None, :, None]) & (
        key_positions[:, None, None, :] != EMPTY
    )
    logits = logits.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)


class RetentionPolicy(ABC):
    """A way of scoring cached entries: higher score, more worth keeping.

    Subclasses are small dataclasses. The engine hands them only these signals:

    - ``init_state``: once per new token, the layer's gate input (hidden state after the
      pre-attention norm) and the new post-RoPE keys; the returned float per (head, token) is
      stored next to the entry as its state.
    - ``observe``: if ``accumulates``, the attention probabilities of every query of a forward.
    - ``score``: at eviction time, a `LayerView` with the window of the latest ``window`` queries.

    ``comparable`` says whether scores share one scale across heads and layers. When False and
    entries of different heads compete (global or layer allocation), the engine rank-normalises
    the scores within each (layer, head) first.
    """

    name: ClassVar[str] = ""
    window: int = 0
    accumulates: ClassVar[bool] = False
    comparable: ClassVar[bool] = True
    evicts: ClassVar[bool] = True
    uses_vision_saliency: ClassVar[bool] = False  # engine taps the vision encoder (VisionZip)
    preferred_allocation: ClassVar[str] = "global"  # used when the config names none
    # Whole-number options that must be at least 1 (others that default to a whole number must
    # be at least 0): checked when the policy is built by name with options.
    positive_options: ClassVar[tuple[str, ...]] = ()

    def init_state(
        self, layer: int, hidden: torch.Tensor | None, keys: torch.Tensor
    ) -> torch.Tensor | None:
        """Per-entry state [b, kv_heads, q] for new tokens, or None for zeros."""
        return None

    def observe(self, layer: int, head: int, probs: torch.Tensor, state: torch.Tensor) -> None:
        """Accumulate attention probs [b, group, q, L_h] into ``state`` [b, L_h] in place."""

    @abstractmethod
    def score(self, view: LayerView) -> list[torch.Tensor]:
        """Score [b, L_h] of every entry of every KV head of one layer."""

    def score_layers(self, views: list[LayerView]) -> list[list[torch.Tensor]]:
        """Scores of all layers; override when one layer's signal scores the others (FastV)."""
        return [self.score(view) for view in views]

    def bind(self, model) -> None:
        """Called once when the policy is attached to a model (to load gates, read sizes, ...)."""


POLICIES: dict[str, type[RetentionPolicy]] = {}


def register(cls: type[RetentionPolicy]) -> type[RetentionPolicy]:
    """Class decorator: make a policy available by its ``name``."""
    POLICIES[cls.name] = cls
    return cls


def build_policy(policy: str | RetentionPolicy, **kwargs) -> RetentionPolicy:
    """A policy instance from a registered name (with options) or an instance as is."""
    if isinstance(policy, RetentionPolicy):
        if kwargs:
            raise ValueError("policy_kwargs are only used with a policy given by name")
        return policy
    if policy not in POLICIES:
        names = ", ".join(sorted(POLICIES))
        raise UnknownPolicyError(f"unknown policy {policy!r}; registered policies: {names}")
    cls = POLICIES[policy]
    _check_options(cls, kwargs)
    return cls(**kwargs)


def _check_options(cls: type[RetentionPolicy], options: dict[str, Any]) -> None:
    """Options of a whole-number default are whole numbers in range; unknown ones are named."""
    defaults = {f.name: f.default for f in fields(cls) if f.init}
    for name, value in options.items():
        if name not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"policy {cls.name!r} has no option {name!r}; its options: {known}")
        if isinstance(defaults[name], int) and not isinstance(defaults[name], bool):
            low = 1 if name in cls.positive_options else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"policy_kwargs[{name!r}] of {cls.name!r} must be a whole number >= {low}, "
                    f"got {value!r}"
                )
