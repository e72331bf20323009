"""The budget is a ceiling: protections live inside it, the question is what is protected, and
the defaults pick the best policy a model ships."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch
from checkpoints import write_family, write_qwen2_vl, write_testbed
from transformers import GenerationConfig

import mmretain
from mmretain import Session
from mmretain.api import load
from mmretain.engine import ROOM_SHARE
from mmretain.errors import BudgetWarning, GatesMismatchError
from mmretain.gates import RetentionGates
from mmretain.tags import Modality, TokenTags
from mmretain.testbed import model_path

GREEDY = GenerationConfig(max_new_tokens=4, do_sample=False)
# The last generated token is not fed back: the cache holds the prompt as eviction left it.
ONE_TOKEN = GenerationConfig(max_new_tokens=1, do_sample=False)


def slots(run) -> int:
    return run.n_layers * run.n_heads


@pytest.mark.parametrize("budget", [0.1, 64])
def test_a_text_prompt_is_compressed_to_the_budget(llama, budget):
    """A plain generate marks no question: the whole 1,000-token prompt is compressed."""
    prompt = torch.randint(3, 100, (1, 1000), generator=torch.Generator().manual_seed(0))
    with mmretain.retain(llama.model, budget=budget) as run:
        llama.model.generate(prompt, max_new_tokens=8, do_sample=False)
    stats = run.stats
    tokens = 64 if budget == 64 else int(0.1 * stats.tokens_seen)
    assert stats.entries_kept <= tokens * slots(run)
    assert stats.kv_fraction <= tokens / stats.tokens_seen
    assert stats.evictions > 0


def test_a_question_longer_than_the_budget_keeps_its_last_tokens_with_one_warning(llama):
    with torch.inference_mode(), mmretain.retain(llama.model, budget=64) as run:
        session = Session(run)
        session.extend({"input_ids": torch.randint(3, 100, (1, 200))})
        question = torch.randint(3, 100, (1, 300))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reply = session.generate({"input_ids": question}, ONE_TOKEN)
    budget_warnings = [w for w in caught if issubclass(w.category, BudgetWarning)]
    assert len(budget_warnings) == 1
    assert "question keeps only its last tokens" in str(budget_warnings[0].message)
    assert len(reply.tokens) == 1
    assert session.cache.entries() <= 64 * slots(run)
    assert session.cache.turn == (200, 500)
    for layer in session.cache.layers:
        for positions in layer.positions:
            assert set(range(500 - 32, 500)) <= set(positions[0].tolist())  # half of 64


@pytest.mark.parametrize("allocation", ["uniform", "layer", "global"])
def test_a_question_the_size_of_the_budget_leaves_half_of_every_share_to_the_ranking(
    llama, allocation
):
    """24 question tokens in a 24-token budget: they would fill every share, so only the last
    12 are protected and the ranking chooses the other half."""
    budget, context, asked = 24, 100, 24
    config = mmretain.RetentionConfig(policy="knorm", budget=budget, allocation=allocation)
    with torch.inference_mode(), mmretain.retain(llama.model, config) as run:
        session = Session(run)
        session.extend({"input_ids": torch.randint(3, 100, (1, context))})
        with pytest.warns(BudgetWarning, match="question keeps only its last tokens"):
            session.generate({"input_ids": torch.randint(3, 100, (1, asked))}, ONE_TOKEN)
    protected = set(range(context + asked - budget // 2, context + asked))
    chosen_by_ranking = 0
    for layer in session.cache.layers:
        kept = [set(positions[0].tolist()) - {-1} for positions in layer.positions]
        assert all(protected <= heads for heads in kept)
        chosen = [len(heads - protected) for heads in kept]
        if allocation == "uniform":
            assert chosen == [budget // 2] * len(kept)
        chosen_by_ranking += sum(chosen)
    assert chosen_by_ranking == budget // 2 * slots(run)


def test_a_one_token_prompt_piece_is_prefill_not_decoding(llama):
    """Only a generated token leaves decoding's free room below the budget: a one-token piece
    of a prompt (the newline that closes a LLaVA-OneVision video) is evicted to the budget."""
    budget = 32
    with torch.inference_mode(), mmretain.retain(llama.model, budget=budget) as run:
        session = Session(run)
        session.extend({"input_ids": torch.randint(3, 100, (1, 100))})
        assert session.cache.entries() == budget * slots(run)
        tail = llama.model.get_input_embeddings()(torch.tensor([[5]]))
        session.extend_embeddings(
            tail, torch.tensor([[[100]]]), TokenTags.text(1, 1, Modality.VIDEO)
        )
        assert session.cache.entries() == budget * slots(run)
        # A generated token is decoding: the eviction leaves its room (2 tokens per slot here).
        session.generate({"input_ids": torch.randint(3, 100, (1, 1))}, GREEDY)
        room = min(run.config.buffer, budget // ROOM_SHARE)
        assert room == 2
        assert session.cache.entries() < budget * slots(run)


def test_protections_are_lifted_recent_window_first(llama):
    """Sinks and the question fit in half of the budget; with the recent window they do not:
    only it is lifted."""
    with torch.inference_mode(), mmretain.retain(llama.model, budget=0.3, sink=4, recent=20) as run:
        session = Session(run)
        with pytest.warns(BudgetWarning, match=r"protection of the recent window is lifted;"):
            session.extend({"input_ids": torch.randint(3, 100, (1, 100))})
            session.generate({"input_ids": torch.randint(3, 100, (1, 10))}, ONE_TOKEN)
    for layer in session.cache.layers:
        for positions in layer.positions:
            kept = set(positions[0].tolist())
            assert {0, 1, 2, 3} <= kept  # sinks
            assert set(range(100, 110)) <= kept  # the question
    assert session.cache.entries() <= int(0.3 * 110) * slots(run)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next", "llava_onevision"])
def test_the_chat_question_is_what_is_protected(family, tmp_path, image_file):
    path = (
        write_qwen2_vl(tmp_path / family)
        if family == "qwen2_vl"
        else write_family(family, tmp_path / family)
    )
    vlm = load(path, policy="knorm", budget=0.8)
    question = "what is the colour of the shape ?"
    image = {"type": "image", "image": str(image_file)}
    vlm.chat([{"role": "user", "content": [image, {"type": "text", "text": question}]}], 2)
    cache = vlm.run.cache
    start, end = cache.turn
    asked = vlm.tokenizer(question, add_special_tokens=False)["input_ids"]
    assert vlm.tokenizer.decode(vlm._chat.ids[start:end]).split() == question.split()
    assert end - start == len(asked)
    assert cache.evictions > 0
    for layer in cache.layers:
        for positions in layer.positions:
            assert set(range(start, end)) <= set(positions[0].tolist())
    assert cache.stats.entries_kept <= int(0.8 * cache.get_seq_length()) * slots(vlm.run)


def test_the_default_policy_is_global_when_tied_gates_ship(tmp_path):
    bare = write_testbed(tmp_path / "bare")
    assert load(bare).run.policy.name == "snapkv"
    assert load(bare).config.budget == mmretain.config.DEFAULT_BUDGET
    gated = write_testbed(tmp_path / "gated")
    model = load(gated).model
    RetentionGates.for_model(model, tied=False, width=8).save_pretrained(gated / "retention_gates")
    assert load(gated).run.policy.name == "snapkv"  # untied gates cannot rank all layers together
    RetentionGates.for_model(model, tied=True, width=8).save_pretrained(gated / "retention_gates")
    assert load(gated).run.policy.name == "global"
    assert load("testbed").run.policy.name == "global"
    assert load(gated, policy="tova").run.policy.name == "tova"


def test_streaming_keeps_its_sinks_and_the_latest_tokens(llama):
    """StreamingLLM's sinks are part of its score, with no sink protection configured."""
    with mmretain.retain(llama.model, policy="streaming", budget=12) as run:
        llama.model(torch.randint(3, 100, (1, 60)))
    for layer in run.cache.layers:
        for positions in layer.positions:
            assert sorted(positions[0].tolist()) == [0, 1, 2, 3, *range(52, 60)]


def test_generate_keeps_the_question_it_is_told_of(llama):
    """``question_tokens=N``: the context is compressed, the prompt's last N tokens are kept."""
    prompt = torch.randint(3, 100, (1, 80), generator=torch.Generator().manual_seed(3))
    with mmretain.retain(llama.model, policy="knorm", budget=24) as run:
        llama.model.generate(prompt, max_new_tokens=3, do_sample=False, question_tokens=10)
    assert run.cache.turn == (70, 80)
    for layer in run.cache.layers:
        for positions in layer.positions:
            assert set(range(70, 80)) <= set(positions[0].tolist())


def test_gates_may_name_the_allocation_they_rank_best_with(tmp_path):
    gated = write_testbed(tmp_path / "gated")
    model = load(gated).model
    gates = RetentionGates.for_model(model, tied=True, width=8)
    gates.config = dataclasses.replace(gates.config, allocation="layer")
    gates.save_pretrained(gated / "retention_gates")
    for asked, used in ((None, "layer"), ("global", "global")):
        with mmretain.retain(model, policy="global", allocation=asked) as run:
            assert run.allocation_mode == used
    config_file = gated / "retention_gates" / "retention_gates.json"
    record = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**record, "allocation": "everywhere"}))
    with (
        pytest.raises(GatesMismatchError, match="allocation 'everywhere'"),
        mmretain.retain(model, policy="global"),
    ):
        pass
    # The shipped LLaVA test-bed gates rank per layer (chosen on held-out samples).
    shipped = RetentionGates.from_pretrained(model_path("testbed-llava") / "retention_gates")
    assert shipped.config.allocation == "layer"


def test_two_runs_from_one_config_do_not_share_a_policy():
    """The LLaVA test-bed gates name `layer` allocation, the Qwen2-VL ones none: a run on one
    model must not rank with the gates or allocation a run on the other bound."""
    from mmretain.location import load_model

    config = mmretain.RetentionConfig(policy="global", budget=0.1)
    qwen, llava = load_model(model_path("testbed")), load_model(model_path("testbed-llava"))
    with mmretain.retain(qwen, config) as first:
        pass
    with mmretain.retain(llava, config) as second:
        assert second.allocation_mode == "layer"
    with mmretain.retain(qwen, config) as third:
        assert third.allocation_mode == "global"
        assert third.policy._gates.config.model_family == "qwen2_vl"
    assert len({id(run.policy) for run in (first, second, third)}) == 3
    assert config.retention_policy._gates is None
