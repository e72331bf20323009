"""Invariant 2: evicting a set E equals the unmodified model with E masked out of attention.

The reference runs the stock model on a full `DynamicCache` with positions unchanged; its
attention hides, per (layer, KV head), exactly the entries the retained run had evicted before
each forward call. Logits of every call must agree.
"""

from __future__ import annotations

import pytest
import torch
from conftest import kept_positions
from transformers import AttentionInterface, DynamicCache

import mmretain
from mmretain.compat import cache_kwargs

REFERENCE = "mmretain_test_reference"
_hidden: dict = {}  # per (layer, kv head) bool [positions] of entries the reference must hide


def reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
    _, n_heads, q, _ = query.shape
    n_kv, length = key.shape[1], key.shape[2]
    group = n_heads // n_kv
    positions = torch.arange(length)
    causal = positions[None, :] <= positions[length - q :, None]  # [q, L]
    allowed = causal[None].repeat(n_kv, 1, 1)  # [Hkv, q, L]
    for h in range(n_kv):
        hide = _hidden.get((module.layer_idx, h))
        if hide is not None:
            allowed[h, :, : hide.shape[0]] &= ~hide
    allowed = allowed.repeat_interleave(group, dim=0)[None]
    keys = key.repeat_interleave(group, dim=1)
    values = value.repeat_interleave(group, dim=1)
    logits = (query @ keys.transpose(-1, -2)) * scaling
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return (probs @ values).transpose(1, 2).contiguous(), None


AttentionInterface.register(REFERENCE, reference_attention)


def set_attention(model, name: str) -> None:
    multimodal = hasattr(model.config, "text_config")
    model.set_attn_implementation({"text_config": name} if multimodal else name)


def replay(tiny, calls, kept_before):
    """Logits of the stock model over the same calls, hiding what was evicted before each."""
    cache = DynamicCache(config=tiny.model.config)
    logits, seen = [], 0
    set_attention(tiny.model, REFERENCE)
    try:
        for inputs, kept in zip(calls, kept_before, strict=True):
            _hidden.clear()
            for key, positions in kept.items():
                hide = torch.ones(seen, dtype=torch.bool)
                hide[list(positions)] = False
                _hidden[key] = hide
            out = tiny.model(**inputs, **cache_kwargs(cache), use_cache=True)
            logits.append(out.logits)
            seen += inputs["input_ids"].shape[1]
    finally:
        set_attention(tiny.model, "sdpa")
        _hidden.clear()
    return logits


def calls_for(tiny):
    first = tiny.prompt(
        [3, "image", 4, "image", 6] if tiny.family in ("llava", "qwen2_vl") else [40]
    )
    rest = [{"input_ids": tiny.text(n)[None]} for n in (5, 3, 1, 1, 1, 4, 1)]
    return [first, *rest]


@pytest.mark.parametrize("allocation", ["global", "layer", "uniform"])
@pytest.mark.parametrize(
    "policy", ["snapkv", "h2o", "knorm", "tova", "random", "fastv", "visionzip"]
)
def test_logits_equal_masked_reference(any_model, policy, allocation):
    if policy == "visionzip" and any_model.family in ("llama", "qwen2"):
        pytest.skip("visionzip needs a vision encoder")
    calls = calls_for(any_model)
    config = mmretain.RetentionConfig(
        policy=policy,
        budget=14,
        allocation=allocation,
        sink=2,
        recent=3,
        protect_turn=False,
        buffer=0,
    )
    kept_before, logits = [], []
    with mmretain.retain(any_model.model, config) as run:
        cache = run.new_cache()
        for inputs in calls:
            kept_before.append(kept_positions(cache) if cache.initialized_layers else {})
            logits.append(any_model.model(**inputs, **cache_kwargs(cache), use_cache=True).logits)
        assert cache.evictions >= 3
        per_head = [n for layer in run.stats.kept_by_head for n in layer]
    expected = replay(any_model, calls, kept_before)
    for got, want in zip(logits, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if allocation == "uniform":
        assert len(set(per_head)) == 1
    assert sum(per_head) <= 14 * run.n_layers * run.n_heads
