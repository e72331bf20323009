"""Policies that need no attention: keep everything, random, StreamingLLM, K-norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LayerView, RetentionPolicy, register


@register
@dataclass
class FullCache(RetentionPolicy):
    """No eviction: the reference every other policy is measured against."""

    name = "full"
    evicts = False

    def score(self, view: LayerView) -> list[torch.Tensor]:
        return [p.float() for p in view.positions]


@register
@dataclass
class RandomScores(RetentionPolicy):
    """Uniform random scores, drawn once per entry: the floor any method must beat."""

    name = "random"
    seed: int = 0

    def score(self, view: LayerView) -> list[torch.Tensor]:
        # A hash of (seed, layer, head, position), not a generator's stream: an entry draws the
        # same score whatever ran before it, in this sequence, a copy of it or another run.
        return [
            _uniform_hash(positions, hash((self.seed, view.layer, head)))
            for head, positions in enumerate(view.positions)
        ]


# splitmix64's finaliser constants, as signed 64-bit integers (torch has no unsigned int64).
_MULTIPLIERS = (-4658895280553007687, -7723592293110705685)


def _uniform_hash(positions: torch.Tensor, key: int) -> torch.Tensor:
    """A float in [0, 1) per position, a fixed function of the position and ``key`` (a hash of
    integers, which Python does not salt)."""
    x = positions.long() + ((key & 0x7FFFFFFF) << 32)
    for multiplier in _MULTIPLIERS:
        x = (x ^ (x >> 31)) * multiplier  # int64 products wrap, as the mix needs
    x = x ^ (x >> 31)  # an arithmetic shift: this clears the sign bit, so take bits 10 to 62
    return ((x >> 10) & ((1 << 53) - 1)).double().div(2.0**53).float()


@register
@dataclass
class StreamingWindow(RetentionPolicy):
    """Attention sinks plus the most recent tokens.

    Xiao et al., "Efficient Streaming Language Models with Attention Sinks", arXiv:2309.17453.
    The first ``sinks`` positions outrank everything; the others rank by recency.
    """

    name = "streaming"
    sinks: int = 4

    def score(self, view: LayerView) -> list[torch.Tensor]:
        top = float(view.tokens_seen + self.sinks)
        return [torch.where(p < self.sinks, top - p, p).float() for p in view.positions]


@register
@dataclass
class KeyNorm(RetentionPolicy):
    """Keep keys of small L2 norm, which draw the most attention.

    Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression",
    arXiv:2406.11430. Norms are not comparable between heads, hence rank normalisation.
    """

    name = "knorm"
    comparable = False

    def init_state(self, layer: int, hidden: torch.Tensor | None, keys: torch.Tensor):
        return -keys.float().norm(dim=-1)

    def score(self, view: LayerView) -> list[torch.Tensor]:
        return list(view.state)
