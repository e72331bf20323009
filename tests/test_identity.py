"""Invariant 1: with a budget at least the sequence length, every policy is the unmodified model."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import mmretain
from mmretain.compat import cache_kwargs
from mmretain.gates import RetentionGates
from mmretain.policies import POLICIES
from mmretain.policies.gates import GatedRetention

NEW_TOKENS = 6
PROMPTS = {
    "one image": [4, "image", 5],
    "two images": [3, "image", 2, "image", 4],
}


def policy_for(name: str, model):
    """The policy by name; gated ones get fresh tied gates, as identity must hold for any gates."""
    if issubclass(POLICIES[name], GatedRetention):
        return POLICIES[name](gates=RetentionGates.for_model(model, tied=True, width=16))
    return name


def greedy(model, inputs, **extra):
    return model.generate(**inputs, **extra, max_new_tokens=NEW_TOKENS, do_sample=False)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_vlm_generate_matches_vanilla(vlm, policy, prompt):
    inputs = vlm.prompt(PROMPTS[prompt])
    expected = greedy(vlm.model, inputs)
    budget = inputs["input_ids"].shape[1] + NEW_TOKENS
    config = dict(policy=policy_for(policy, vlm.model), budget=budget, recent=8)
    with mmretain.retain(vlm.model, **config) as run:
        got = greedy(vlm.model, inputs)
    assert torch.equal(got, expected)
    seen_visual = int((inputs["input_ids"] >= 120).sum())
    kept_visual = run.stats.kept_by_modality["image"] + run.stats.kept_by_modality["video"]
    assert kept_visual == seen_visual * run.n_layers * run.n_heads


def test_qwen2_vl_video_generate_matches_vanilla():
    from conftest import make_qwen2_vl

    tiny = make_qwen2_vl()
    inputs = tiny.prompt([3, "image", 2, "video", 4])
    expected = greedy(tiny.model, inputs)
    budget = inputs["input_ids"].shape[1] + NEW_TOKENS
    with mmretain.retain(tiny.model, policy="snapkv", budget=budget, recent=8) as run:
        got = greedy(tiny.model, inputs)
    assert torch.equal(got, expected)
    assert run.stats.seen_by_modality["video"] == 8


@pytest.mark.parametrize("policy", ["snapkv", "h2o", "knorm"])
def test_two_chat_turns_match_vanilla(vlm, policy):
    """Turn 2 continues generate on the cache turn 1 left, as a chat session does."""
    turn1 = vlm.prompt([4, "image", 5])
    turn2_text = vlm.text(6)[None]

    def two_turns(cache):
        first = greedy(vlm.model, turn1, **cache_kwargs(cache))
        # The image is in the cache already: turn 2 brings only its new tokens' inputs.
        second = {"input_ids": torch.cat([first, turn2_text], dim=1)}
        if "image_grid_thw" in turn1:
            pad = torch.zeros_like(second["input_ids"][:, turn1["input_ids"].shape[1] :])
            second["mm_token_type_ids"] = torch.cat([turn1["mm_token_type_ids"], pad], dim=1)
            second["image_grid_thw"] = turn1["image_grid_thw"]
        return greedy(vlm.model, second, **cache_kwargs(cache))

    expected = two_turns(DynamicCache(config=vlm.model.config))
    budget = expected.shape[1]
    with mmretain.retain(vlm.model, policy=policy, budget=budget, recent=8) as run:
        got = two_turns(run.new_cache())
    assert torch.equal(got, expected)
    assert run.cache.prompts == 0  # plain generate calls mark no question


@pytest.mark.parametrize("allocation", ["global", "layer", "uniform"])
def test_text_models_match_vanilla(any_model, allocation):
    if any_model.family in ("llava", "qwen2_vl"):
        pytest.skip("covered above")
    inputs = {"input_ids": any_model.text(40)[None]}
    expected = greedy(any_model.model, inputs)
    with mmretain.retain(any_model.model, policy="snapkv", budget=64, allocation=allocation):
        got = greedy(any_model.model, inputs)
    assert torch.equal(got, expected)


def test_chunked_prefill_matches_vanilla(llama):
    inputs = {"input_ids": llama.text(50)[None]}
    expected = greedy(llama.model, inputs)
    with mmretain.retain(llama.model, policy="h2o", budget=80, chunk_tokens=7) as run:
        got = greedy(llama.model, inputs)
    assert torch.equal(got, expected)
    assert run.stats.tokens_seen == 50 + NEW_TOKENS - 1


def test_padded_batch_matches_vanilla(llama):
    """Left padding: pad slots are never stored as entries and never attended."""
    ids = torch.stack(
        [llama.text(20), torch.cat([torch.zeros(5, dtype=torch.long), llama.text(15)])]
    )
    mask = (torch.arange(20)[None] >= torch.tensor([[0], [5]])).long()
    inputs = {"input_ids": ids, "attention_mask": mask}
    expected = greedy(llama.model, inputs, pad_token_id=0)
    with mmretain.retain(llama.model, policy="tova", budget=64) as run:
        got = greedy(llama.model, inputs, pad_token_id=0)
    assert torch.equal(got, expected)
    kept_rows = [int((p[1] >= 0).sum()) for p in run.cache.layers[0].positions]
    assert kept_rows == [15 + NEW_TOKENS - 1] * run.n_heads
