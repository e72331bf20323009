"""Bad input gets a clear, typed error and leaves the model exactly as it was."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import mmretain
from mmretain.compat import cache_kwargs
from mmretain.errors import UnknownPolicyError, UnsupportedModelError


def hooks_of(model) -> set:
    """Every hook function on the model (transformers adds some of its own on first use)."""
    return {
        (name, id(hook))
        for name, m in model.named_modules()
        for hook in [*m._forward_pre_hooks.values(), *m._forward_hooks.values()]
    }


def assert_untouched(model) -> None:
    assert not any(
        "RetentionRun" in repr(h) for m in model.modules() for h in m._forward_pre_hooks.values()
    )
    assert "forward" not in vars(
        model.model.language_model if hasattr(model.model, "language_model") else model.model
    )
    assert "generate" not in vars(model)
    text = model.config.get_text_config()
    assert text._attn_implementation == "sdpa"


def test_unsupported_model_names_supported_families():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    expected = r"Supported families: llava.*qwen2_vl.*Llama"
    with pytest.raises(UnsupportedModelError, match=expected), mmretain.retain(model, budget=64):
        pass
    assert hooks_of(model) == set()


@pytest.mark.parametrize("budget", [0, -5, 0.0, "0MiB", "lots"])
def test_nonpositive_or_unparsable_budget(vlm, budget):
    with pytest.raises(ValueError, match="budget"):
        mmretain.retain(vlm.model, policy="snapkv", budget=budget).__enter__()
    assert_untouched(vlm.model)


def test_budget_smaller_than_protection_states_numbers(vlm):
    with pytest.raises(
        ValueError, match=r"36 protected tokens .* more than half of the budget of 20 tokens"
    ):
        mmretain.retain(vlm.model, policy="snapkv", budget=20, sink=4, recent=32).__enter__()
    assert_untouched(vlm.model)


def test_unknown_policy_lists_registered_names(vlm):
    with pytest.raises(UnknownPolicyError, match=r"registered policies: .*fastv.*snapkv"):
        mmretain.retain(vlm.model, policy="snapkvv", budget=64).__enter__()
    assert_untouched(vlm.model)


def test_unknown_allocation(llama):
    with pytest.raises(ValueError, match="global, layer, uniform"):
        mmretain.RetentionConfig(allocation="per-head")


def test_error_inside_block_restores_model(vlm):
    with pytest.raises(RuntimeError, match="boom"), mmretain.retain(vlm.model, budget=64):
        assert vlm.model.config.get_text_config()._attn_implementation == "mmretain"
        raise RuntimeError("boom")
    assert_untouched(vlm.model)
    assert vlm.model.config.vision_config._attn_implementation == "sdpa"


def test_cache_outside_retain_refuses(llama):
    with mmretain.retain(llama.model, policy="snapkv", budget=64) as run:
        cache = run.new_cache()
    with pytest.raises(mmretain.MMRetainError, match=r"inside `with mmretain\.retain"):
        llama.model(input_ids=torch.tensor([[5, 6, 7]]), **cache_kwargs(cache))


@pytest.mark.parametrize("assisted", ["assistant_model", "prompt_lookup_num_tokens"])
def test_assisted_decoding_is_refused_before_the_prefill(llama, assisted):
    """It drafts tokens and crops the cache back: evicted entries cannot come back."""
    from transformers import GenerationConfig

    from mmretain.errors import RetentionStateError

    ids = torch.tensor([[5, 6, 7, 8]])
    extra = (
        {"assistant_model": llama.model}
        if assisted == "assistant_model"
        else {"generation_config": GenerationConfig(prompt_lookup_num_tokens=2, max_new_tokens=3)}
    )
    with mmretain.retain(llama.model, policy="snapkv", budget=64) as run:
        with pytest.raises(RetentionStateError, match="evicted entries cannot be restored"):
            llama.model.generate(input_ids=ids, max_new_tokens=3, **extra)
        assert run.stats.tokens_seen == 0  # nothing was prefilled
    assert_untouched(llama.model)


def test_a_missing_model_directory_is_named(tmp_path, image_file, capsys):
    from mmretain import cli
    from mmretain.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"no model directory at .*absent"):
        mmretain.load(tmp_path / "absent")
    code = cli.main(["chat", "--image", str(image_file), "--model", str(tmp_path / "absent")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no model directory at" in err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sink", 2.5, "sink must be a whole number"),
        ("recent", -1, "recent must be a whole number"),
        ("protect_turn", "no", "protect_turn must be True or False"),
        ("modality_caps", {"image": 2}, r"modality_caps\['image'\] must be a fraction"),
        ("chunk_tokens", 0, "chunk_tokens must be a positive"),
        ("head_floor", 1.0, r"head_floor must be a share of the budget in \[0, 1\)"),
        ("budget", "lots", "budget could not be read"),
        ("policy_kwargs", {"windw": 8}, "policy 'snapkv' has no option 'windw'; its options: "),
        ("policy_kwargs", {"window": "x"}, r"policy_kwargs\['window'\] of 'snapkv' must be a"),
        ("policy_kwargs", {"kernel": 0}, r"policy_kwargs\['kernel'\] .* whole number >= 1"),
        ("policy_kwargs", {"kernel": 2.5}, r"policy_kwargs\['kernel'\]"),
    ],
)
def test_config_problems_are_typed_errors(field, value, message):
    from mmretain.errors import ConfigError

    options = {"policy": "snapkv", field: value}
    with pytest.raises(ConfigError, match=message):
        mmretain.RetentionConfig(**options)


def test_config_is_frozen_and_derives_from_its_fields():
    import dataclasses

    config = mmretain.RetentionConfig(policy="snapkv", budget=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.budget = 0.5
    trimkv = dataclasses.replace(config, policy="trimkv")
    assert (config.allocation_mode, trimkv.allocation_mode) == ("global", "uniform")
    assert dataclasses.replace(config, budget=0.5).parsed_budget.value == 0.5
