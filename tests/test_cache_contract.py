"""The engine on transformers' own cache contract: every forward reads only the cache it is given,
a copy of a cache is a complete branch, and the hooks compose with accelerate's."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import dispatch_model
from conftest import make_llama, make_qwen2_vl
from test_errors import assert_untouched
from transformers import DynamicCache

import mmretain
from mmretain.api import load
from mmretain.compat import cache_kwargs
from mmretain.errors import RetentionStateError

FULL = 10_000  # tokens: more than any prompt here, so nothing is evicted
QUESTIONS = ["what colour is the video ?", "which came first ?"]


def layer_tensors(cache):
    """Every tensor a cache's future depends on, layer by layer and head by head."""
    for layer in cache.layers:
        yield from layer.keys_by_head
        yield from layer.values_by_head
        yield from layer.positions
        yield from layer.state
        yield from layer.modality
        if layer.window is not None:
            yield layer.window
            yield layer.window_positions


def assert_same_cache(a, b) -> None:
    tensors_a, tensors_b = list(layer_tensors(a)), list(layer_tensors(b))
    assert len(tensors_a) == len(tensors_b)
    for x, y in zip(tensors_a, tensors_b, strict=True):
        assert torch.equal(x, y)
    assert (a.get_seq_length(), a.turn, a.prompts) == (b.get_seq_length(), b.turn, b.prompts)


@pytest.mark.parametrize("make", [make_llama, make_qwen2_vl], ids=["llama", "qwen2_vl"])
def test_plain_forward_inside_retain_is_the_stock_model(make):
    tiny = make()
    prompts = (
        [tiny.prompt([9]), tiny.prompt([14])]
        if tiny.family == "llama"
        else [tiny.prompt([3, "image", 2]), tiny.prompt([5, "image", 6])]
    )
    stock = [tiny.model(**p).logits for p in prompts]
    with mmretain.retain(tiny.model, policy="snapkv", budget=FULL):
        for inputs, expected in zip(prompts, stock, strict=True):
            torch.testing.assert_close(tiny.model(**inputs).logits, expected)
    assert_untouched(tiny.model)


def test_a_wrong_cache_type_is_refused_and_the_model_restored(llama):
    ids = llama.text(6)[None]
    with (
        pytest.raises(RetentionStateError, match=r"needs a RetentionCache, got DynamicCache"),
        mmretain.retain(llama.model, policy="snapkv", budget=FULL),
    ):
        llama.model.generate(ids, max_new_tokens=2, **cache_kwargs(DynamicCache()))
    assert_untouched(llama.model)
    with (
        pytest.raises(RetentionStateError, match=r"pass cache=run.new_cache\(\)"),
        mmretain.retain(llama.model, policy="snapkv", budget=FULL),
    ):
        llama.model(ids, **cache_kwargs(DynamicCache()))
    assert_untouched(llama.model)


def test_a_users_own_cache_carries_a_conversation(llama):
    first, second = llama.text(7)[None], llama.text(5)[None]
    stock = DynamicCache(config=llama.model.config)
    turn1 = llama.model.generate(first, max_new_tokens=3, do_sample=False, **cache_kwargs(stock))
    turn2 = torch.cat([turn1, second], dim=1)
    expected = llama.model.generate(turn2, max_new_tokens=3, do_sample=False, **cache_kwargs(stock))
    with mmretain.retain(llama.model, policy="h2o", budget=FULL) as run:
        cache = run.new_cache()
        got1 = llama.model.generate(first, max_new_tokens=3, do_sample=False, **cache_kwargs(cache))
        got2 = llama.model.generate(
            torch.cat([got1, second], dim=1),
            max_new_tokens=3,
            do_sample=False,
            **cache_kwargs(cache),
        )
    assert torch.equal(got2, expected)
    assert cache.turn == (0, 0)  # a plain generate marks no question: all is compressed
    assert run.stats.tokens_seen == cache.get_seq_length() == expected.shape[1] - 1


def test_nested_retain_is_refused_and_the_model_restored(llama):
    with mmretain.retain(llama.model, policy="snapkv", budget=FULL):
        with (
            pytest.raises(RetentionStateError, match="already active"),
            mmretain.retain(llama.model, policy="h2o", budget=FULL),
        ):
            pass
        assert llama.model.config._attn_implementation == "mmretain"
    assert_untouched(llama.model)


def test_installing_a_run_twice_leaves_the_model_restored(llama):
    run = mmretain.engine.RetentionRun(llama.model, mmretain.RetentionConfig(budget=FULL))
    run.install()
    with pytest.raises(RetentionStateError, match="already active"):
        run.install()
    run.remove()
    assert_untouched(llama.model)


# -- accelerate ------------------------------------------------------------------------------------
def dispatched(tiny, device_map):
    """``tiny`` dispatched with accelerate: every module on the map gets an AlignDevicesHook,
    which wraps its forward on the instance."""
    model = dispatch_model(tiny.model, device_map=device_map, main_device="cpu", force_hooks=True)
    return model


@pytest.mark.parametrize("make", [make_llama, make_qwen2_vl], ids=["llama", "qwen2_vl"])
def test_an_accelerate_dispatched_model_runs_under_retain(make):
    tiny = make()
    # The decoder whole on one device: accelerate wraps the very module mmretain hooks.
    if tiny.family == "llama":
        device_map = {"model": "cpu", "lm_head": "cpu"}
        decoder, inputs = tiny.model.model, tiny.prompt([40])
    else:
        device_map = {"model.visual": "cpu", "model.language_model": "cpu", "lm_head": "cpu"}
        decoder, inputs = tiny.model.model.language_model, tiny.prompt([20, "image", 20])
    model = dispatched(tiny, device_map)
    assert hasattr(decoder, "_hf_hook") and "forward" in vars(decoder)
    accelerate_forward = vars(decoder)["forward"]
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    with mmretain.retain(model, policy="snapkv", budget=FULL):
        got = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)
    with mmretain.retain(model, policy="snapkv", budget=16, recent=4, protect_turn=False) as run:
        model.generate(**inputs, max_new_tokens=6, do_sample=False)
    stats = run.stats
    budget_bytes = 16 * run.n_layers * run.n_heads * run.cache.bytes_per_entry()
    assert stats.entries_kept * run.cache.bytes_per_entry() <= stats.bytes_held <= budget_bytes
    assert vars(decoder)["forward"] is accelerate_forward  # accelerate's wrapper, as it was


# -- compress once, answer many --------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["snapkv", "h2o"])
def test_a_question_is_answered_alike_after_another(checkpoint, video_file, policy):
    """Each question is asked on its own copy of the compressed video: what Q1 decoded never
    reaches Q2's branch (its observation window, its accumulated attention)."""
    options = dict(policy=policy, budget=20, sink=0, recent=2, buffer=1, protect_turn=False)
    if policy == "snapkv":
        options["policy_kwargs"] = {"window": 48}  # longer than a question and its answer
    vlm = load(checkpoint, **options)
    ask = dict(fps=4, chunk_frames=4, max_new_tokens=12)
    both = vlm.answer_video(video_file, QUESTIONS, **ask)
    after_q1 = copy.deepcopy(vlm.run.cache)
    alone = vlm.answer_video(video_file, QUESTIONS[1:], **ask)
    assert both[1].tokens == alone[0].tokens
    assert len(alone[0].tokens) > 1 and vlm.run.cache.evictions > 0
    assert_same_cache(after_q1, vlm.run.cache)


def test_load_follows_from_pretrained_device_map_and_dtype(checkpoint):
    vlm = load(checkpoint)
    assert vlm.model.dtype == torch.float32  # "auto": as the checkpoint was saved
    assert vlm.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    half = load(checkpoint, dtype="bfloat16", device_map="cpu")
    assert half.model.dtype == torch.bfloat16 and half.model.device.type == "cpu"
