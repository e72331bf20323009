"""Policies scored by attention, recomputed for the few query rows they need.

Attention probabilities sum to one per query in every head, so these scores share one scale
across heads and layers and compete directly under global allocation (as AdaKV does within a
layer: Feng et al., arXiv:2407.11550).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..tags import Modality
from .base import LayerView, RetentionPolicy, register


def _group_mean_window(view: LayerView, h: int) -> torch.Tensor:
    """Attention of the window on head h's entries, averaged over its query group: [b, W, L]."""
    return view.window_attention(h).mean(dim=1)


@register
@dataclass
class SnapKV(RetentionPolicy):
    """Attention from an observation window of the latest queries, pooled along the sequence.

    Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", arXiv:2404.14469.
    """

    name = "snapkv"
    positive_options = ("window", "kernel")
    window: int = 32
    kernel: int = 7

    def score(self, view: LayerView) -> list[torch.Tensor]:
        scores = []
        for h in range(view.n_kv_heads):
            votes = _group_mean_window(view, h).mean(dim=1)  # [b, L]
            if self.kernel > 1 and votes.shape[1]:
                # As SnapKV's reference code does: pool only the entries before the window,
                # zero-padded at both ends (the window's own entries keep their votes).
                before = view.positions[h] < view.window_positions[0]
                pooled = F.avg_pool1d(
                    torch.where(before, votes, 0.0)[:, None],
                    self.kernel,
                    stride=1,
                    padding=self.kernel // 2,
                )[:, 0, : votes.shape[1]]
                votes = torch.where(before, pooled, votes)
            scores.append(votes)
        return scores


@register
@dataclass
class TOVA(RetentionPolicy):
    """Attention of the latest query only.

    Oren et al., "Transformers are Multi-State RNNs", arXiv:2401.06104.
    """

    name = "tova"
    positive_options = ("window",)
    window: int = 1

    def score(self, view: LayerView) -> list[torch.Tensor]:
        return [_group_mean_window(view, h)[:, -1] for h in range(view.n_kv_heads)]


@register
@dataclass
class HeavyHitters(RetentionPolicy):
    """Attention accumulated over every query so far (heavy hitters).

    Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs",
    arXiv:2306.14048.
    """

    name = "h2o"
    accumulates = True

    def observe(self, layer: int, head: int, probs: torch.Tensor, state: torch.Tensor) -> None:
        state += probs.sum(dim=(1, 2)).to(state.dtype)

    def score(self, view: LayerView) -> list[torch.Tensor]:
        return list(view.state)


VISUAL = (int(Modality.IMAGE), int(Modality.VIDEO))


def is_visual(modality: torch.Tensor) -> torch.Tensor:
    return (modality == VISUAL[0]) | (modality == VISUAL[1])


@register
@dataclass
class FastV(RetentionPolicy):
    """Visual tokens ranked by the attention the latest query gives them at layer ``layer``.

    Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", arXiv:2403.06764. Only visual
    entries are scored; text and generated entries always rank above them. Layers below
    ``layer`` keep their visual entries too, as in the paper (pruning starts at layer K).
    """

    name = "fastv"
    positive_options = ("window",)
    window: int = 1
    layer: int = 2

    def score(self, view: LayerView) -> list[torch.Tensor]:
        return self.score_layers([view])[0]

    def score_layers(self, views: list[LayerView]) -> list[list[torch.Tensor]]:
        pivot = views[min(self.layer, len(views) - 1)]
        # Attention at the pivot layer, averaged over all its heads, indexed by sequence position.
        by_position = torch.zeros(
            pivot.keys[0].shape[0], pivot.tokens_seen, device=pivot.keys[0].device
        )
        for h in range(pivot.n_kv_heads):
            attn = _group_mean_window(pivot, h)[:, -1] / pivot.n_kv_heads
            pos = pivot.positions[h].long().clamp_min(0)
            by_position.scatter_add_(1, pos, attn * ~pivot.empty(h))
        out = []
        for view in views:
            layer_scores = []
            for h in range(view.n_kv_heads):
                pos = view.positions[h].long().clamp_min(0)
                score = by_position.gather(1, pos)
                keep_anyway = ~is_visual(view.modality[h]) | (view.layer < pivot.layer)
                layer_scores.append(torch.where(keep_anyway, torch.inf, score))
            out.append(layer_scores)
        return out


@register
@dataclass
class VisionZip(RetentionPolicy):
    """Visual tokens ranked by the attention they receive inside the vision encoder.

    Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
    arXiv:2412.04467. This keeps VisionZip's dominant tokens; its merging of the dropped tokens
    into a few contextual tokens is not done (a cache entry is either kept or freed). Text and
    generated entries always rank above visual ones.
    """

    name = "visionzip"
    uses_vision_saliency = True

    def score(self, view: LayerView) -> list[torch.Tensor]:
        return [
            torch.where(is_visual(m), s, torch.inf)
            for m, s in zip(view.modality, view.state, strict=True)
        ]
