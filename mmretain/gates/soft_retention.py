"""Soft retention: the attention the gates are trained through, where nothing is evicted.

Every attention logit (query t, key j) gets the additive bias log β_j · (t − j), i.e. key j's
weight is multiplied by its survival probability β_j^(t−j) before the softmax normalises. At
β = 1 the bias is zero and attention is the model's own. (TRIM-KV, Bui et al.,
https://arxiv.org/abs/2512.03324.)

`soft_retention(model, gates)` switches the text model's attention to this function for the
duration of a ``with`` block: a pre-hook on each attention module runs the layer's gate on its
input and hands log β to the attention function through the call's kwargs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ..adapters import adapter_for
from .retention_gates import RetentionGates

SOFT_RETENTION = "mmretain_soft_retention"
LOG_BETA_KWARG = "mmretain_log_beta"


def retention_bias(log_beta: torch.Tensor, n_queries: int) -> torch.Tensor:
    """log β_j · (t − j) for the last ``n_queries`` positions t and all keys j: [b, kv, q, k].

    Future keys (j > t) get 0 here; the causal mask removes them.
    """
    n_keys = log_beta.shape[-1]
    steps = torch.arange(n_keys - n_queries, n_keys, device=log_beta.device)
    distance = steps[:, None] - torch.arange(n_keys, device=log_beta.device)[None, :]
    return log_beta[:, :, None, :] * distance.clamp_min(0).to(log_beta.dtype)


def soft_retention_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA whose logits carry the retention bias of the log β in ``kwargs``."""
    log_beta = kwargs[LOG_BETA_KWARG]  # [b, kv_heads, k]
    n_queries, n_keys = query.shape[2], key.shape[2]
    if attention_mask is None:  # the mask builder skips a plain causal mask
        steps = torch.arange(n_keys - n_queries, n_keys, device=query.device)
        attention_mask = torch.arange(n_keys, device=query.device)[None, :] <= steps[:, None]
    allowed = attention_mask.bool()
    # A query with nothing to attend to (left padding) attends everywhere, to stay finite.
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    group = query.shape[1] // key.shape[1]
    bias = retention_bias(log_beta, n_queries).repeat_interleave(group, dim=1)
    bias = bias.masked_fill(~allowed, float("-inf")).to(query.dtype)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=bias, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(SOFT_RETENTION, soft_retention_attention)
# Without a registered mask builder, transformers hands the function no mask at all, even for
# a padded batch.
ALL_MASK_ATTENTION_FUNCTIONS.register(SOFT_RETENTION, sdpa_mask)


@contextmanager
def soft_retention(model: nn.Module, gates: RetentionGates) -> Iterator[dict[int, torch.Tensor]]:
    """Run ``model``'s text attention under soft retention inside the block.

    Yields a dict that each forward fills with every layer's log β [b, kv_heads, T], for the
    capacity loss. The vision tower keeps its attention; everything is restored on exit.
    """
    adapter = adapter_for(model)
    log_betas: dict[int, torch.Tensor] = {}

    def gate_hook(module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        log_beta = gates.log_retention(module.layer_idx, hidden)
        log_betas[module.layer_idx] = log_beta
        kwargs[LOG_BETA_KWARG] = log_beta
        return args, kwargs

    saved = adapter.attention_implementation()
    handles = []
    try:
        adapter.set_attention_implementation(SOFT_RETENTION)
        for module in adapter.attention_modules:
            handles.append(module.register_forward_pre_hook(gate_hook, with_kwargs=True))
        yield log_betas
    finally:
        for handle in handles:
            handle.remove()
        adapter.set_attention_implementation(saved)
