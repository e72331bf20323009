"""The attention function that reads `RetentionCache`'s ragged per-head storage.

It is registered with transformers under ``ATTENTION_NAME`` and set on the text model only while
a run is active. It reads the cache the model was given for this call (handed over by the run's
pre-hook on each attention module), never any other. Each KV head attends over its own entries
with SDPA; the causal mask comes from each entry's original position, so evicted entries are
simply absent and later tokens keep the positions they would have had without eviction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .cache import EMPTY, RetentionCache
from .errors import RetentionStateError

ATTENTION_NAME = "mmretain"
RUN_KWARG = "mmretain_run"
CACHE_KWARG = "mmretain_cache"
HIDDEN_KWARG = "mmretain_hidden"
# Query rows per SDPA call: bounds the [rows, entries] mask and logits of a long prefill.
QUERY_BLOCK = 1024


def causal_allowed(key_positions: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
    """[b, q, L] bool: key is filled and not after the query. Rows with nothing allowed (a
    padding query at the very start) attend everywhere, to stay finite, as transformers does."""
    keys = key_positions[:, None, :]
    allowed = (keys <= query_positions[None, :, None]) & (keys != EMPTY)
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def retention_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    run = kwargs.get(RUN_KWARG)
    if run is None:
        raise RetentionStateError(
            f"the {ATTENTION_NAME!r} attention implementation runs only inside mmretain.retain(); "
            "restore the model's attention with model.set_attn_implementation('sdpa')"
        )
    cache = kwargs.get(CACHE_KWARG)
    if not isinstance(cache, RetentionCache) or not cache.layers[module.layer_idx].is_initialized:
        raise RetentionStateError(
            "the decoder ran without the RetentionCache it needs under mmretain.retain(); "
            "call the whole model (or its language model) with cache=run.new_cache() or none"
        )
    layer = cache.layers[module.layer_idx]
    _, n_query_heads, q, _ = query.shape
    n_kv = len(layer.storage)
    group = n_query_heads // n_kv
    query_positions = torch.arange(layer.seen - q, layer.seen, device=query.device)
    run.on_new_entries(layer, module.layer_idx, kwargs.get(HIDDEN_KWARG), key)
    if layer.seen == q and not layer.has_empty:
        # The cache held nothing before this call and no token is padding: every head holds
        # exactly the new keys in order, so the fused causal kernel is exact.
        out = F.scaled_dot_product_attention(
            query, key, value, is_causal=q > 1, dropout_p=dropout, scale=scaling, enable_gqa=True
        )
        observed = False
    else:
        # A decoded token of a policy that accumulates attention: its probabilities are
        # computed once, for the output and for the policy, instead of SDPA and a recomputation.
        observed = run.policy.accumulates and q == 1 and dropout == 0.0
        heads = zip(
            layer.keys_by_head, layer.values_by_head, layer.positions, layer.state, strict=True
        )
        outs = []
        for h, (keys, values, positions, state) in enumerate(heads):
            group_query = query[:, h * group : (h + 1) * group]
            if observed:
                head_out, probs = _decode_with_probs(
                    keys, values, positions if layer.has_empty else None, group_query, scaling
                )
                run.policy.observe(module.layer_idx, h, probs, state)
            else:
                head_out = _attend_head(
                    keys,
                    values,
                    positions if layer.has_empty or q > 1 else None,
                    group_query,
                    query_positions,
                    dropout,
                    scaling,
                )
            outs.append(head_out)
        out = torch.cat(outs, dim=1)
    run.on_attention(layer, module.layer_idx, query, query_positions, scaling, observed)
    return out.transpose(1, 2).contiguous(), None


def _decode_with_probs(
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor | None,
    query: torch.Tensor,
    scaling: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One KV head's query group [b, g, 1, d] of a decoded token over the head's entries: the
    output [b, g, 1, dv] and the float32 attention probabilities [b, g, 1, L]."""
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    logits = torch.einsum("bgqd,bld->bgql", query.float(), keys.float()) * scale
    if positions is not None:  # every entry precedes the token: only empty slots are masked
        logits = logits.masked_fill((positions == EMPTY)[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.matmul(probs.to(values.dtype), values[:, None]), probs


def _attend_head(
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor | None,
    query: torch.Tensor,
    query_positions: torch.Tensor,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """One KV head's query group [b, g, q, d] over the head's entries (keys/values [b, L, d],
    their positions [b, L]; None when a decoded token may see them all)."""
    keys, values = keys[:, None], values[:, None]
    q = query.shape[2]
    if q == 1:
        # Every stored entry precedes a decoded token: only empty slots need masking, the same
        # for the whole query group, whose heads then go in as one head's queries (no GQA path).
        mask = None if positions is None else (positions != EMPTY)[:, None, None, :]
        b, g, _, d = query.shape
        out = F.scaled_dot_product_attention(
            query.reshape(b, 1, g, d),
            keys,
            values,
            attn_mask=mask,
            dropout_p=dropout,
            scale=scaling,
        )
        return out.reshape(b, g, 1, -1)
    blocks = []
    for start in range(0, q, QUERY_BLOCK):
        rows = slice(start, min(q, start + QUERY_BLOCK))
        mask = causal_allowed(positions, query_positions[rows])[:, None]
        blocks.append(
            F.scaled_dot_product_attention(
                query[:, :, rows],
                keys,
                values,
                attn_mask=mask,
                dropout_p=dropout,
                scale=scaling,
                enable_gqa=True,
            )
        )
    return torch.cat(blocks, dim=2)


AttentionInterface.register(ATTENTION_NAME, retention_attention)
