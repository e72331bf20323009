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

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def init_state(self, layer: int, hidden: torch.Tensor | None, keys: torch.Tensor):
        b, n_heads, q, _ = keys.shape
        return torch.rand((b, n_heads, q), generator=self._generator).to(keys.device)

    def score(self, view: LayerView) -> list[torch.Tensor]:
        return list(view.state)


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
