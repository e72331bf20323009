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

from .cache import EMPTY, RetentionCache, RetentionLayer
from .errors import RetentionStateError
from .policies.base import RetentionPolicy

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
    run.on_new_entries(layer, module.layer_idx, kwargs.get(HIDDEN_KWARG), key)
    q = query.shape[2]
    observed = False
    if layer.seen == q and not layer.has_empty:
        # The cache held nothing before this call and no token is padding: every head holds
        # exactly the new keys in order, so the fused causal kernel is exact.
        out = F.scaled_dot_product_attention(
            query, key, value, is_causal=q > 1, dropout_p=dropout, scale=scaling, enable_gqa=True
        )
    elif q == 1:
        # A decoded token of a policy that accumulates attention: its probabilities are
        # computed once, for the output and for the policy, instead of SDPA and a recomputation.
        observed = run.policy.accumulates and dropout == 0.0
        observer = run.policy if observed else None
        out = _decode(layer, module.layer_idx, query, dropout, scaling, observer)
    else:
        out = _attend_chunk(layer, query, dropout, scaling)
    run.on_attention(layer, module.layer_idx, query, scaling, observed)
    return out.transpose(1, 2).contiguous(), None


def _decode(
    layer: RetentionLayer,
    layer_idx: int,
    query: torch.Tensor,
    dropout: float,
    scaling: float | None,
    observer: RetentionPolicy | None = None,
) -> torch.Tensor:
    """A decoded token [b, H, 1, d] over every head's entries, all of which precede it: only
    empty slots need a mask. ``observer`` (an accumulating policy) is given the probabilities."""
    b, n_query_heads = query.shape[:2]
    group = n_query_heads // len(layer.storage)
    outs = []
    for h, (head, n) in enumerate(zip(layer.storage, layer.lengths, strict=True)):
        keys, values = head[0][:, None, :n], head[1][:, None, :n]
        mask = (head[2][:, None, None, :n] != EMPTY) if layer.has_empty else None
        group_query = query[:, h * group : (h + 1) * group]
        if observer is None:
            # The head's entries broadcast over its query group as a view (no GQA copy), so
            # the kernel splits the group's heads across threads.
            keys, values = keys.expand(b, group, n, -1), values.expand(b, group, n, -1)
            outs.append(
                F.scaled_dot_product_attention(
                    group_query, keys, values, attn_mask=mask, dropout_p=dropout, scale=scaling
                )
            )
            continue
        head_out, probs = _decode_with_probs(keys, values, mask, group_query, scaling)
        observer.observe(layer_idx, h, probs, head[3][:, :n])
        outs.append(head_out)
    return torch.cat(outs, dim=1)


def _attend_chunk(
    layer: RetentionLayer, query: torch.Tensor, dropout: float, scaling: float | None
) -> torch.Tensor:
    """Queries [b, H, q, d] of a chunk over every head's entries (the chunk's own included),
    causal by each entry's original position, in blocks of ``QUERY_BLOCK`` query rows."""
    q = query.shape[2]
    group = query.shape[1] // len(layer.storage)
    query_positions = layer.latest_positions(q, query.device)
    heads = zip(layer.keys_by_head, layer.values_by_head, layer.positions, strict=True)
    outs = []
    for h, (keys, values, positions) in enumerate(heads):
        keys, values = keys[:, None], values[:, None]
        blocks = []
        for start in range(0, q, QUERY_BLOCK):
            rows = slice(start, min(q, start + QUERY_BLOCK))
            mask = causal_allowed(positions, query_positions[rows])[:, None]
            blocks.append(
                F.scaled_dot_product_attention(
                    query[:, h * group : (h + 1) * group, rows],
                    keys,
                    values,
                    attn_mask=mask,
                    dropout_p=dropout,
                    scale=scaling,
                    enable_gqa=True,
                )
            )
        outs.append(torch.cat(blocks, dim=2))
    return torch.cat(outs, dim=1)


def _decode_with_probs(
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    query: torch.Tensor,
    scaling: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One KV head's query group [b, g, 1, d] of a decoded token over the head's entries
    (keys/values [b, 1, L, d], ``mask`` [b, 1, 1, L] of filled slots or None): the output
    [b, g, 1, dv] and the float32 attention probabilities [b, g, 1, L]."""
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # The group's queries as the rows of one product with the head's keys: a [b, g, 1, d]
    # batch against [b, 1, L, d] would broadcast, and copy, the keys once per query head.
    rows = query.transpose(1, 2).float()
    logits = torch.matmul(rows, keys.float().transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    out = torch.matmul(probs.to(values.dtype), values)
    return out.transpose(1, 2), probs.transpose(1, 2)


AttentionInterface.register(ATTENTION_NAME, retention_attention)
