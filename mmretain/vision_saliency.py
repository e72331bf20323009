"""How much attention each visual token receives inside the vision encoder.

VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language
Models", arXiv:2412.04467) keeps the visual tokens the encoder itself attends to most. The
encoder keeps its SDPA attention: while a tap is open, a thin wrapper around SDPA recomputes
softmax(q k^T) for the one tapped layer only and records, per patch, the attention it receives
(from the CLS query when the encoder has one, else averaged over all queries).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

VISION_ATTENTION_NAME = "mmretain_vision"
# The open tap lives on the attention module it taps, so it goes with that model and no state is
# shared between models or runs; the attention function finds it there.
_TAP_ATTRIBUTE = "_mmretain_saliency_tap"


class VisionSaliencyTap:
    """Records saliency from one vision attention module while it is open."""

    def __init__(self, module: torch.nn.Module, has_cls: bool, patches_per_token: int):
        self.module = module
        self.has_cls = has_cls
        self.patches_per_token = patches_per_token
        self.recorded: list[torch.Tensor] = []

    def __enter__(self) -> VisionSaliencyTap:
        setattr(self.module, _TAP_ATTRIBUTE, self)
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self.module, _TAP_ATTRIBUTE, None) is self:
            delattr(self.module, _TAP_ATTRIBUTE)

    def record(self, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        probs = torch.softmax((query.float() @ key.float().transpose(-1, -2)) * scaling, dim=-1)
        # [b, patches]: what the CLS query attends to, or what all queries attend to on average
        received = probs[:, :, 0, 1:].mean(dim=1) if self.has_cls else probs.mean(dim=(1, 2))
        self.recorded.extend(received.unbind(0))

    def take(self) -> torch.Tensor:
        """Saliency per visual token in encoder order since the last take; merged patches sum."""
        if not self.recorded:
            return torch.empty(0)
        patches = torch.cat(self.recorded)
        self.recorded = []
        return patches.view(-1, self.patches_per_token).sum(dim=1)


def saliency_attention(module, query, key, value, attention_mask, **kwargs):
    tap = getattr(module, _TAP_ATTRIBUTE, None)
    if tap is not None:
        tap.record(query, key, kwargs.get("scaling") or query.shape[-1] ** -0.5)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(VISION_ATTENTION_NAME, saliency_attention)
