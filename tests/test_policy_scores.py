"""Policy scores against their papers' reference computations, written out independently."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from conftest import TEXT
from transformers import LlamaConfig, LlamaForCausalLM

import mmretain
from mmretain.policies.attention import SnapKV
from mmretain.policies.base import LayerView


def test_snapkv_pools_only_the_entries_before_the_window_as_its_reference_code():
    """SnapKV's reference (and kvpress): the window's mean attention over the keys before it,
    averaged over each KV head's query group, avg-pooled with zero padding at both ends."""
    torch.manual_seed(0)
    b, kv_heads, group, length, window, d, kernel = 1, 2, 3, 40, 8, 16, 5
    keys = torch.randn(b, kv_heads, length, d)
    queries = torch.randn(b, kv_heads * group, window, d)
    positions = torch.arange(length)
    view = LayerView(
        layer=0,
        keys=[keys[:, h] for h in range(kv_heads)],
        positions=[positions[None] for _ in range(kv_heads)],
        state=[torch.zeros(b, length) for _ in range(kv_heads)],
        modality=[torch.zeros(b, length, dtype=torch.int8) for _ in range(kv_heads)],
        window=queries,
        window_positions=positions[-window:],
        scaling=1 / math.sqrt(d),
        tokens_seen=length,
    )
    scores = SnapKV(window=window, kernel=kernel).score(view)

    repeated = keys.repeat_interleave(group, dim=1)  # every query head sees its KV head
    logits = queries @ repeated.transpose(2, 3) / math.sqrt(d)
    causal = torch.ones(window, length, dtype=torch.bool).tril(diagonal=length - window)
    probs = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)
    before = probs[..., : length - window].mean(dim=2)  # [b, query heads, L - W]
    pooled = F.avg_pool1d(before, kernel, stride=1, padding=kernel // 2)
    reference = pooled.view(b, kv_heads, group, -1).mean(dim=2)
    for h in range(kv_heads):
        torch.testing.assert_close(scores[h][:, : length - window], reference[:, h])
        # The window's own entries rank by their votes, unpooled.
        own = probs[:, h * group : (h + 1) * group, :, length - window :].mean(dim=(1, 2))
        torch.testing.assert_close(scores[h][:, length - window :], own)


def test_snapkv_scores_a_head_that_global_allocation_emptied():
    """Global allocation may leave a head with no entries; scoring it again gives no scores
    (avg-pooling an empty sequence raises)."""
    d, window = 8, 4
    view = LayerView(
        layer=0,
        keys=[torch.randn(1, 6, d), torch.randn(1, 0, d)],
        positions=[torch.arange(6)[None], torch.zeros(1, 0, dtype=torch.long)],
        state=[torch.zeros(1, 6), torch.zeros(1, 0)],
        modality=[torch.zeros(1, 6, dtype=torch.int8), torch.zeros(1, 0, dtype=torch.int8)],
        window=torch.randn(1, 2, window, d),
        window_positions=torch.arange(6, 6 + window),
        scaling=d**-0.5,
        tokens_seen=6 + window,
    )
    scores = SnapKV(window=window, kernel=3).score(view)
    assert [tuple(s.shape) for s in scores] == [(1, 6), (1, 0)]


def test_h2o_accumulates_the_attention_every_query_paid_each_entry():
    """H2O's state: the attention each entry received, summed over every query so far (the
    prompt's and each decoded token's) and over its KV head's query group; here against the
    eager attention weights of the same model over the same sequence."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TEXT)).eval()
    ids = torch.randint(3, 100, (1, 12))
    with mmretain.retain(model, policy="h2o", budget=10_000) as run:
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    fed = out[:, :-1]  # the last token was sampled, never fed back
    model.set_attn_implementation("eager")
    with torch.no_grad():
        weights = model(fed, output_attentions=True).attentions  # per layer [b, heads, T, T]
    group = TEXT["num_attention_heads"] // TEXT["num_key_value_heads"]
    for layer, attention in zip(run.cache.layers, weights, strict=True):
        for h, state in enumerate(layer.state):
            expected = attention[:, h * group : (h + 1) * group].sum(dim=(1, 2))
            torch.testing.assert_close(state, expected, rtol=1e-5, atol=1e-5)


def test_gates_score_an_entry_by_what_it_is_worth_to_the_next_query():
    """log β_i · (t − i) with t the next query's position: the newest entry, whose gate forgets
    it at once, scores below an old one its gate keeps, instead of a free 0 for being new."""
    from mmretain.policies.gates import GlobalRetention

    seen = 10
    log_beta = torch.tensor([[-1e-4, -0.5, -30.0]])  # kept for good, fading, forgotten at once
    positions = torch.tensor([[0, 5, seen - 1]])
    view = LayerView(
        layer=0,
        keys=[torch.zeros(1, 3, 4)],
        positions=[positions],
        state=[log_beta],
        modality=[torch.zeros(1, 3, dtype=torch.int8)],
        window=None,
        window_positions=None,
        scaling=1.0,
        tokens_seen=seen,
    )
    (scores,) = GlobalRetention().score(view)
    torch.testing.assert_close(scores, log_beta * torch.tensor([[10.0, 5.0, 1.0]]))
    assert scores.argsort(descending=True).tolist() == [[0, 1, 2]]


def test_random_scores_are_a_function_of_the_entry_not_of_what_ran_before():
    """An entry's random score depends on (seed, layer, head, position) alone: a second run, or
    a copy of a sequence, draws the same; another seed draws others; scores are uniform."""
    from mmretain.policies.simple import RandomScores

    def view(layer: int, positions: torch.Tensor) -> LayerView:
        n = positions.shape[1]
        return LayerView(
            layer=layer,
            keys=[torch.zeros(1, n, 4)] * 2,
            positions=[positions] * 2,
            state=[torch.zeros(1, n)] * 2,
            modality=[torch.zeros(1, n, dtype=torch.int8)] * 2,
            window=None,
            window_positions=None,
            scaling=1.0,
            tokens_seen=int(positions.max()) + 1,
        )

    policy = RandomScores(seed=3)
    everything = policy.score(view(1, torch.arange(20000)[None]))
    policy.score(view(0, torch.arange(50)[None]))  # another layer scored in between
    some = policy.score(view(1, torch.tensor([[7, 19999, 3]])))
    for head in range(2):
        torch.testing.assert_close(some[head][0], everything[head][0, [7, 19999, 3]])
    assert not torch.equal(everything[0], everything[1])  # heads draw apart
    other = RandomScores(seed=4).score(view(1, torch.arange(20000)[None]))
    assert not torch.equal(other[0], everything[0])
    values = everything[0][0]
    assert float(values.min()) >= 0 and float(values.max()) < 1
    assert abs(float(values.mean()) - 0.5) < 0.01 and abs(float(values.std()) - 12**-0.5) < 0.01
