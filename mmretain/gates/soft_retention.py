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
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    causal_mask_function,
    sdpa_mask,
)

from ..adapters import adapter_for
from ..errors import GatesTrainingError
from .retention_gates import RetentionGates

SOFT_RETENTION = "mmretain_soft_retention"
SOFT_RETENTION_DENSE = "mmretain_soft_retention_dense"
LOG_BETA_KWARG = "mmretain_log_beta"
ATTENTION_PATHS = {"fused": SOFT_RETENTION, "dense": SOFT_RETENTION_DENSE}

# Base of the digits that write a position t into the widened query. Every digit is < 256, which
# bfloat16's 8 significant bits hold exactly, so digit × log β is exact in the kernel's float32
# accumulator and t·log β never loses the precision that t itself would (bf16 rounds 32,001 to
# 32,000).
DIGIT = 256
# Logit offset (before the softmax scale) that hides a padded key: far beyond any real logit, yet
# finite in float16, so a query with only padding before it (left padding) stays finite.
PADDED_KEY = -1e4
# Fused kernels want a head dim that is a multiple of 8.
HEAD_DIM_MULTIPLE = 8


def retention_bias(log_beta: torch.Tensor, n_queries: int) -> torch.Tensor:
    """log β_j · (t − j) for the last ``n_queries`` positions t and all keys j: [b, kv, q, k].

    Future keys (j > t) get 0 here; the causal mask removes them. The dense reference of
    `widen_for_retention`, which writes the same bias into q and k.
    """
    n_keys = log_beta.shape[-1]
    steps = torch.arange(n_keys - n_queries, n_keys, device=log_beta.device)
    distance = steps[:, None] - torch.arange(n_keys, device=log_beta.device)[None, :]
    return log_beta[:, :, None, :] * distance.clamp_min(0).to(log_beta.dtype)


def widen_for_retention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    log_beta: torch.Tensor,
    scaling: float,
    valid_keys: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q′, k′, v′ with scaling · q′·k′ = scaling · q·k + log β_j · (t − j), and no T × T tensor.

    The bias is separable, (t − j)·L_j = t·L_j − j·L_j, so it fits in extra columns: the query
    gets t in base-256 digits and ones, the key gets L̃ = log β / scaling (rounded once to the
    model's dtype) against each digit, and −2^b·L̃ for each set bit b of j against a one. Every
    extra column and every product of two of them is exact in bf16 inputs with a float32
    accumulator, so the large terms t·L̃ and j·L̃ (≈ 3,500 each at T = 32K) cancel exactly and
    the bias carries only L̃'s own rounding (relative 2⁻⁹ in bf16, as the logits themselves).
    The log β gradient is the difference of two key-gradient sums that the kernel returns in
    the model's dtype: in bf16 at T = 8K it stays within a few percent of float32 (tested).
    ``valid_keys`` [b, k] (bool) hides padding through one more column. v′ is v zero-padded to
    the same width, so the output is ``out[..., :d]``. Queries are the last q of the k positions;
    log β is [b, kv_heads, k] as the gates give it (GQA: one per KV head).
    """
    (b, heads, n_queries, dim), n_keys = query.shape, key.shape[2]
    device, dtype = query.device, query.dtype
    n_bits = max(1, (n_keys - 1).bit_length())
    n_digits = -(-n_bits // (DIGIT.bit_length() - 1))
    steps = torch.arange(n_keys - n_queries, n_keys, device=device)
    digits = [(steps // DIGIT**i % DIGIT) * DIGIT**i for i in range(n_digits)]
    extra_q = torch.stack([*digits, *[torch.ones_like(steps)] * (n_bits + 1)], dim=-1)

    # The one rounding of log β; the columns are built from it in float32 (exactly, as 2^b·L̃ is
    # exact) so that their gradients, which cancel as the columns do, are summed in float32.
    scaled = (log_beta.float() / scaling).to(dtype).float()  # [b, kv, k]
    keys = torch.arange(n_keys, device=device)
    powers = [-(keys & (1 << bit)).float() for bit in range(n_bits)]  # 0 or −2^b
    padding = torch.zeros(b, 1, n_keys, device=device)
    if valid_keys is not None:
        padding = padding.masked_fill(~valid_keys[:, None, :].bool(), PADDED_KEY)
    extra_k = torch.stack(
        [*[scaled] * n_digits, *[scaled * p for p in powers], padding.expand_as(scaled)], dim=-1
    ).to(dtype)

    width = -(-(dim + extra_q.shape[-1]) // HEAD_DIM_MULTIPLE) * HEAD_DIM_MULTIPLE
    fill = width - dim - extra_q.shape[-1]
    extra_q = F.pad(extra_q.to(dtype), (0, fill)).expand(b, heads, n_queries, -1)
    query = torch.cat([query, extra_q], dim=-1)
    key = torch.cat([key, F.pad(extra_k, (0, fill))], dim=-1)
    return query, key, F.pad(value, (0, width - dim))


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
    """Causal SDPA over `widen_for_retention`'s q′, k′, v′: the fused kernels apply, memory
    stays linear in T. ``attention_mask`` is [b, k] key validity or None (`key_validity`)."""
    if query.shape[2] != key.shape[2]:
        raise GatesTrainingError(
            f"soft-retention training attends {query.shape[2]} queries to {key.shape[2]} keys; "
            "it trains on whole sequences without a cache: call the model with use_cache=False"
        )
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    dim = value.shape[-1]
    query, key, value = widen_for_retention(
        query, key, value, kwargs[LOG_BETA_KWARG], scaling, attention_mask
    )
    out = F.scaled_dot_product_attention(
        query, key, value, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=True
    )
    return out[..., :dim].transpose(1, 2).contiguous(), None


def key_validity(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """The mask builder of the fused path: the [b, k] key validity, or None without padding.

    Causality is the kernel's own; a mask that is more than causal plus padding cannot be
    written into q and k, so it is refused with the way out.
    """
    if mask_function is not causal_mask_function or q_offset != 0 or kv_offset != 0:
        raise GatesTrainingError(
            "this model's attention mask is not plain causal with padding (sliding window, "
            "packed sequences or bidirectional media), which the fused soft-retention path "
            "cannot express; train with attention='dense'"
        )
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask[:, -kv_length:].bool()


def soft_retention_dense_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA with the retention bias as an explicit [b, H, q, k] mask: the reference of the fused
    path, exact for any mask, but quadratic in memory and closed to the fused kernels."""
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
ALL_MASK_ATTENTION_FUNCTIONS.register(SOFT_RETENTION, key_validity)
AttentionInterface.register(SOFT_RETENTION_DENSE, soft_retention_dense_attention)
# Without a registered mask builder, transformers hands the function no mask at all, even for
# a padded batch.
ALL_MASK_ATTENTION_FUNCTIONS.register(SOFT_RETENTION_DENSE, sdpa_mask)


@contextmanager
def soft_retention(
    model: nn.Module, gates: RetentionGates, *, attention: str = "fused"
) -> Iterator[dict[int, torch.Tensor]]:
    """Run ``model``'s text attention under soft retention inside the block.

    ``attention="fused"`` writes the bias into q and k (`widen_for_retention`): linear memory,
    the fused kernels of SDPA; ``"dense"`` is the explicit-mask reference. Yields a dict that each
    forward fills with every layer's log β [b, kv_heads, T], for the capacity loss. The vision
    tower keeps its attention; everything is restored on exit.
    """
    if attention not in ATTENTION_PATHS:
        raise GatesTrainingError(
            f"unknown soft-retention attention {attention!r}; choose one of "
            f"{sorted(ATTENTION_PATHS)}"
        )
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
        adapter.set_attention_implementation(ATTENTION_PATHS[attention])
        for module in adapter.attention_modules:
            handles.append(module.register_forward_pre_hook(gate_hook, with_kwargs=True))
        yield log_betas
    finally:
        for handle in handles:
            handle.remove()
        adapter.set_attention_implementation(saved)
