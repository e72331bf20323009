"""Invariant 3: the cache holds what it keeps, in bytes, and never more than budget + buffer."""

from __future__ import annotations

import torch
from conftest import TEXT
from transformers import LlamaConfig, LlamaForCausalLM

import mmretain
from mmretain.engine import ROOM_SHARE


def storage_bytes(cache: mmretain.RetentionCache) -> int:
    """Bytes of the storages behind every tensor the cache holds: views cannot hide memory."""
    return sum(
        t.untyped_storage().nbytes()
        for layer in cache.layers
        for head in layer.storage
        for t in head
    )


def free_slots(cache: mmretain.RetentionCache) -> int:
    """Slots allocated beyond the filled ones, over every layer, head and batch row."""
    return sum(
        head[0].shape[0] * (head[0].shape[1] - n)
        for layer in cache.layers
        for head, n in zip(layer.storage, layer.lengths, strict=True)
    )


def test_bytes_held_are_entries_and_free_room_times_entry_size(vlm):
    inputs = vlm.prompt([6, "image", 8, "image", 10])
    with mmretain.retain(
        vlm.model, policy="snapkv", budget=20, recent=4, protect_turn=False
    ) as run:
        vlm.model.generate(**inputs, max_new_tokens=12, do_sample=False)
    stats = run.stats
    slots = run.n_layers * run.n_heads
    assert stats.entries_kept < stats.tokens_seen * slots
    # Decoding evicts below the budget and keeps the slack as room for the next tokens: the
    # room is memory, so it is counted, and entries plus room stay within the budget.
    room = free_slots(run.cache)
    assert room > 0
    assert stats.bytes_held == (stats.entries_kept + room) * run.cache.bytes_per_entry()
    assert stats.entries_kept + room <= 20 * slots
    assert storage_bytes(run.cache) == stats.bytes_held
    assert (
        stats.bytes_full_cache
        == stats.tokens_seen * run.n_layers * run.n_heads * run.cache.bytes_per_entry()
    )


def test_overhead_within_five_percent_for_real_head_sizes():
    torch.manual_seed(0)
    config = LlamaConfig(
        **dict(TEXT, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    )
    model = LlamaForCausalLM(config).eval()  # head_dim 64
    ids = torch.randint(3, 100, (1, 300))
    with mmretain.retain(
        model, policy="knorm", budget=64, chunk_tokens=50, protect_turn=False
    ) as run:
        model.generate(ids, max_new_tokens=4, do_sample=False)
    # Metadata costs under 5% of the keys and values of the slots allocated.
    minimum = (run.stats.entries_kept + free_slots(run.cache)) * run.cache.kv_bytes_per_entry()
    assert storage_bytes(run.cache) <= 1.05 * minimum


def test_global_allocation_keeps_heads_ragged_and_memory_exact(llama):
    ids = llama.text(120)[None]
    with mmretain.retain(
        llama.model, policy="snapkv", budget=30, recent=4, protect_turn=False
    ) as run:
        llama.model.generate(ids, max_new_tokens=3, do_sample=False)
    per_head = [n for layer in run.stats.kept_by_head for n in layer]
    assert len(set(per_head)) > 1  # heads compete: lengths differ
    room = free_slots(run.cache)
    assert storage_bytes(run.cache) == (sum(per_head) + room) * run.cache.bytes_per_entry()


def test_chunked_prefill_peaks_at_budget_plus_chunk(llama):
    budget, chunk = 24, 10
    ids = llama.text(200)[None]
    with mmretain.retain(
        llama.model,
        policy="snapkv",
        budget=budget,
        chunk_tokens=chunk,
        recent=4,
        protect_turn=False,
    ) as run:
        llama.model.generate(ids, max_new_tokens=2, do_sample=False)
    entry_bytes = run.cache.bytes_per_entry()
    per_token = run.n_layers * run.n_heads * entry_bytes
    assert run.stats.peak_bytes_held <= (budget + chunk) * per_token
    assert run.stats.bytes_full_cache > 5 * run.stats.peak_bytes_held


def test_a_fraction_is_of_the_whole_prompt_from_its_first_chunk(llama):
    ids = llama.text(200)[None]
    kept = []
    with mmretain.retain(
        llama.model, policy="tova", budget=0.1, chunk_tokens=10, sink=0, recent=0
    ) as run:
        evict = run.evict
        run.evict = lambda cache, capacity, *room: (
            kept.append(capacity) or evict(cache, capacity, *room)
        )
        llama.model(ids)
    # 10% of the 200-token prompt (20 tokens in every slot) from the first chunk on; the first
    # two chunks fit in it, so the first eviction comes with the third.
    assert kept == [20 * run.n_layers * run.n_heads] * 18


def test_decoding_never_exceeds_the_budget(llama):
    budget, buffer = 32, 5
    seen_entries = []
    with mmretain.retain(
        llama.model, policy="tova", budget=budget, buffer=buffer, recent=4, protect_turn=False
    ) as run:
        hook = llama.model.register_forward_hook(
            lambda *a: seen_entries.append(run.cache.entries())
        )
        try:
            llama.model.generate(
                llama.text(10)[None], min_new_tokens=60, max_new_tokens=60, do_sample=False
            )
        finally:
            hook.remove()
    per_token = run.n_layers * run.n_heads
    assert max(seen_entries) <= budget * per_token
    # Once the cache passes the budget it is brought below it by the buffer, capped at a
    # sixteenth of the budget (2 tokens here), so it evicts every 3 steps from then on.
    slack = min(buffer, budget // ROOM_SHARE)
    assert slack == 2
    assert run.stats.evictions == (run.stats.tokens_seen - budget - 1) // (slack + 1) + 1
    assert run.stats.entries_kept <= budget * per_token


def test_tokens_kept_counts_a_token_kept_in_every_slot_once():
    from mmretain.cache import RetentionStats

    stats = RetentionStats(kept_by_head=[[3, 5], [2, 2]], kept_by_modality={"video": 8, "text": 4})
    assert stats.slots == 4
    assert stats.tokens_kept == {"video": 2.0, "text": 1.0}


def test_decoding_under_the_budget_writes_into_free_room_inside_it(llama):
    """Below the budget, a decoding step that fills a head's buffer gives it free room (inside
    the budget) instead of copying every head at every step to grow by one token."""
    budget, steps = 64, 30
    buffers, held = set(), []
    with mmretain.retain(llama.model, policy="tova", budget=budget, protect_turn=False) as run:

        def watch(*args):
            buffers.add(run.cache.layers[0].storage[0][0].data_ptr())
            held.append(run.cache.layers[0].allocated())

        hook = llama.model.register_forward_hook(watch)
        try:
            llama.model.generate(
                llama.text(10)[None], min_new_tokens=steps, max_new_tokens=steps, do_sample=False
            )
        finally:
            hook.remove()
    # Room: a sixteenth of the budget, 4 tokens per head: a copy every 4 steps, not every step
    # (plus the prefill's buffer and the first step's growth).
    room = budget // ROOM_SHARE
    assert len(buffers) <= steps // room + 2
    assert run.stats.evictions == 0
    assert max(held) <= budget * run.n_heads
    assert run.stats.bytes_held <= budget * run.n_layers * run.n_heads * run.cache.bytes_per_entry()
