"""Learned retention gates: capacity sum, soft retention, save/load, training and gated policies."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from conftest import FACTORIES, TEXT, kept_positions, top_entries
from transformers import LlamaConfig, LlamaForCausalLM

import mmretain
from mmretain.compat import cache_kwargs
from mmretain.errors import GatesMismatchError, GatesNotFoundError, GatesTrainingError
from mmretain.gates import BatchDirectory, RetentionGates, capacity, train_gates
from mmretain.gates.cli import main as train_gates_cli
from mmretain.gates.loss import distillation_loss
from mmretain.gates.soft_retention import (
    LOG_BETA_KWARG,
    retention_bias,
    soft_retention,
    soft_retention_attention,
)
from mmretain.gates.train import frozen
from mmretain.policies.gates import GlobalRetention

WIDTH = 16  # gate width: small gates keep the tests fast


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from intra-op threads, and on a busy machine their
    synchronisation makes a training step 10-40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_gates(model, *, tied: bool = True, bias: float | None = None, seed: int = 0):
    """Gates for ``model``; ``bias`` overrides the readout bias (0: β ≈ 1/2, varied)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gates = RetentionGates.for_model(model, tied=tied, width=WIDTH)
    if bias is not None:
        with torch.no_grad():
            for readout in gates.readouts:
                readout.bias.fill_(bias)
    return gates


def naive_live(log_beta: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """S_t = Σ_{i≤t, valid i} β_i^(t−i) with the full T × T matrix."""
    steps = torch.arange(log_beta.shape[-1])
    age = (steps[:, None] - steps[None, :]).to(log_beta.dtype)
    counted = (age >= 0) & valid[..., None, :]
    return torch.where(counted, log_beta[..., None, :].exp() ** age.clamp_min(0), 0.0).sum(-1)


def random_token_batches(n: int, length: int = 48, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        target = torch.zeros(2, length, dtype=torch.long)
        target[:, length // 2 :] = 1
        batches.append(
            {"input_ids": torch.randint(3, 100, (2, length), generator=g), "target_mask": target}
        )
    return batches


# -- capacity ------------------------------------------------------------------------------------
def test_capacity_sum_equals_naive_formula(monkeypatch):
    monkeypatch.setattr(capacity, "BLOCK_ELEMENTS", 500)  # many blocks, a ragged last one
    g = torch.Generator().manual_seed(0)
    log_beta = (-torch.rand(2, 3, 2, 45, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    valid = torch.ones(2, 45, dtype=torch.bool)
    valid[1, :7] = False  # left padding
    valid_b = valid[:, None, None, :]

    live = capacity.expected_live_entries(log_beta, valid_b)
    expected = naive_live(log_beta, valid_b)
    torch.testing.assert_close(live, expected, rtol=1e-12, atol=1e-12)

    weights = torch.randn(live.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((live * weights).sum(), log_beta)
    (want,) = torch.autograd.grad((expected * weights).sum(), log_beta)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("global_capacity", [False, True])
def test_capacity_loss_is_mean_of_nonzero_overflow_terms(global_capacity):
    g = torch.Generator().manual_seed(1)
    log_beta = -torch.rand(1, 3, 2, 30, generator=g, dtype=torch.float64) * 0.3
    budget, valid = 6, torch.ones(1, 30, dtype=torch.bool)
    live = naive_live(log_beta, valid[:, None, None, :])
    seen = torch.arange(1, 31, dtype=torch.float64)
    if global_capacity:
        live, seen, budget_all = live.sum(dim=(1, 2)), seen * 6, budget * 6
    else:
        budget_all = budget
    terms = torch.relu((live - budget_all) / (seen - budget_all).clamp_min(1))
    want = terms[terms > 0].mean()
    got = capacity.capacity_loss(log_beta, budget, valid, global_capacity=global_capacity)
    torch.testing.assert_close(got, want)


def test_the_floor_asks_a_starved_head_for_its_share_of_the_budget():
    """One head keeps everything, the other forgets fast (S_t ≈ 1.05): the global bound alone
    allows it; a floor of 1/2 adds the starved head's mean shortfall (3 − S_t) / 3 over the
    steps that have seen 3 tokens, and its gradient raises that head's retention."""
    steps, budget = 12, 6
    log_beta = torch.zeros(1, 1, 2, steps, dtype=torch.float64)
    log_beta[0, 0, 1] = -3.0
    log_beta.requires_grad_()
    kwargs = dict(global_capacity=True)
    without = capacity.capacity_loss(log_beta, budget, **kwargs)
    with_floor = capacity.capacity_loss(log_beta, budget, floor=0.5, **kwargs)
    starved = naive_live(log_beta[0, 0, 1].detach(), torch.ones(steps, dtype=torch.bool))
    want = ((3 - starved[2:]) / 3).mean()
    torch.testing.assert_close(with_floor - without, want)
    (grad,) = torch.autograd.grad(with_floor - without, log_beta)
    assert (grad[0, 0, 1, :-1] < 0).all() and (grad[0, 0, 0] == 0).all()
    with pytest.raises(GatesTrainingError, match=r"floor is a share of the budget in \[0, 1\)"):
        capacity.capacity_loss(log_beta, budget, floor=1.5, **kwargs)


# -- soft retention ------------------------------------------------------------------------------
def test_retention_bias_is_log_beta_times_age():
    log_beta = torch.tensor([[[-0.5, -0.25, -1.0]]])
    bias = retention_bias(log_beta, n_queries=2)[0, 0]  # queries t = 1, 2
    assert torch.equal(bias, torch.tensor([[-0.5, 0.0, 0.0], [-1.0, -0.25, 0.0]]))


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_bias_at_beta_one_is_exactly_the_unmodified_attention(family):
    tiny = FACTORIES[family]()
    gates = make_gates(tiny.model, bias=200.0)  # logsigmoid(200) == 0 in float32: β = 1
    if family == "llama":  # a left-padded batch of two
        ids = torch.stack(
            [tiny.text(20), torch.cat([torch.zeros(5, dtype=torch.long), tiny.text(15)])]
        )
        mask = (ids != 0).long()
        inputs = {"input_ids": ids, "attention_mask": mask}
    else:
        inputs = tiny.prompt([5, "image", 3, "video", 6])
    with torch.no_grad():
        stock = tiny.model(**inputs).logits
        with soft_retention(tiny.model, gates) as log_betas:
            soft = tiny.model(**inputs).logits
    assert all(bool((lb == 0).all()) for lb in log_betas.values())
    assert len(log_betas) == 3
    if family == "llama":
        stock, soft = stock[mask.bool()], soft[mask.bool()]
    assert torch.equal(soft, stock)
    assert tiny.model.config.get_text_config()._attn_implementation == "sdpa"


def test_soft_retention_restores_attention_when_the_forward_fails(llama):
    gates = make_gates(llama.model)
    with pytest.raises(RuntimeError), soft_retention(llama.model, gates):
        raise RuntimeError("boom")
    assert llama.model.config._attn_implementation == "sdpa"
    assert not any(m._forward_pre_hooks for m in llama.model.modules())


def padded_llama_batch(llama) -> dict:
    """Two rows, the second left-padded by 5, answers in the last 8 positions."""
    ids = torch.stack(
        [llama.text(24), torch.cat([torch.zeros(5, dtype=torch.long), llama.text(19)])]
    )
    target = torch.zeros_like(ids)
    target[:, -8:] = 1
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "target_mask": target}


def loss_and_gate_grads(model, gates, batch, **kwargs):
    gates.zero_grad(set_to_none=True)
    options = dict(budget=6, global_capacity=True, backward=torch.Tensor.backward, **kwargs)
    with frozen(model):
        terms = distillation_loss(model, gates, batch, **options)
    return terms, {name: p.grad.clone() for name, p in gates.named_parameters()}


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_fused_soft_retention_equals_the_dense_reference(family):
    """q and k widened with the bias give the dense-bias attention's loss and gate gradients:
    a left-padded batch with GQA (4 heads on 2 KV heads), and a Qwen2-VL prompt with media."""
    tiny = FACTORIES[family]()
    gates = make_gates(tiny.model, bias=0.0, seed=2)  # β ≈ 1/2, varied: a strong bias
    if family == "llama":
        batch = padded_llama_batch(tiny)
    else:
        batch = tiny.prompt([5, "image", 3, "video", 6])
        batch["target_mask"] = torch.zeros_like(batch["input_ids"])
        batch["target_mask"][:, -6:] = 1
    dense, dense_grads = loss_and_gate_grads(tiny.model, gates, batch, attention="dense")
    fused, fused_grads = loss_and_gate_grads(tiny.model, gates, batch, attention="fused")
    for name in ("kl", "ce", "capacity"):
        torch.testing.assert_close(getattr(fused, name), getattr(dense, name), rtol=1e-5, atol=1e-6)
    assert dense.kl > 1e-3  # the bias changes the model: the comparison is not vacuous
    for name, grad in dense_grads.items():
        assert grad.abs().max() > 0
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_fused_bias_in_bfloat16_at_8k_is_as_close_to_float32_as_bf16_attention_itself():
    """At T = 8K the bias terms t·log β and j·log β reach ~3,500·|log β| and bfloat16 cannot
    hold t itself; the widened columns keep them exact. Tolerances: the output may differ from
    float32 by at most twice what bf16 costs the stock attention on the same inputs; the log β
    gradient, which the kernel returns as the difference of two key-gradient sums rounded to
    bf16 (2^-9 each), within 5% (relative L2) and in direction (cosine > 0.998)."""
    g = torch.Generator().manual_seed(0)
    length, dim = 8192, 32
    q, k, v = (torch.randn(1, n, length, dim, generator=g) for n in (2, 1, 1))
    q, k, v = (x.bfloat16().float() for x in (q, k, v))  # the same values in both dtypes
    log_beta = -torch.rand(1, 1, length, generator=g) * 0.02
    weights = torch.randn(1, length, 2, dim, generator=g)

    def attend(dtype):
        grad_of = log_beta.clone().requires_grad_()
        out, _ = soft_retention_attention(
            None, q.to(dtype), k.to(dtype), v.to(dtype), None, **{LOG_BETA_KWARG: grad_of}
        )
        (out.float() * weights).sum().backward()
        return out.float(), grad_of.grad

    reference, reference_grad = attend(torch.float32)
    out, grad = attend(torch.bfloat16)
    stock = [
        torch.nn.functional.scaled_dot_product_attention(q.to(t), k.to(t), v.to(t), is_causal=True)
        for t in (torch.float32, torch.bfloat16)
    ]
    stock_error = (stock[1].float() - stock[0]).abs().max()
    assert (out - reference).abs().max() <= 2 * stock_error
    assert (grad - reference_grad).norm() <= 0.05 * reference_grad.norm()
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(), reference_grad.flatten(), dim=0)
    assert cosine > 0.998


def test_a_batch_runs_the_vision_tower_and_the_teacher_once(vlm):
    """The student replays the decoder's recorded call: media are encoded once per batch."""
    batch = vlm.prompt([5, "image", 6])
    batch["target_mask"] = torch.zeros_like(batch["input_ids"])
    batch["target_mask"][:, -4:] = 1
    vision = vlm.model.model.visual if hasattr(vlm.model.model, "visual") else None
    vision = vision or vlm.model.model.vision_tower
    calls = {"vision": 0, "model": 0}
    hooks = [
        vision.register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1)),
        vlm.model.register_forward_hook(lambda *_: calls.__setitem__("model", calls["model"] + 1)),
    ]
    try:
        with frozen(vlm.model):
            gates = make_gates(vlm.model)
            distillation_loss(vlm.model, gates, batch, budget=4, global_capacity=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"vision": 1, "model": 1}


def test_checkpointing_the_frozen_model_gives_the_same_gate_gradients(llama):
    gates = make_gates(llama.model, bias=0.0, seed=4)
    batch = padded_llama_batch(llama)
    plain, plain_grads = loss_and_gate_grads(llama.model, gates, batch)
    again, again_grads = loss_and_gate_grads(llama.model, gates, batch, checkpointing=True)
    assert torch.equal(again.total, plain.total)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(again_grads[name], grad, rtol=1e-6, atol=1e-9)
    assert all("forward" not in vars(layer) for layer in llama.model.model.layers)


def test_unknown_soft_retention_attention_names_the_choices(llama):
    gates = make_gates(llama.model)
    with (
        pytest.raises(GatesTrainingError, match=r"'flash'.*\['dense', 'fused'\]"),
        soft_retention(llama.model, gates, attention="flash"),
    ):
        pass


# -- save / load ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_save_load_round_trips_bit_exactly(tmp_path, llama, tied):
    gates = make_gates(llama.model, tied=tied, seed=3)
    with torch.no_grad():
        for p in gates.parameters():
            p.add_(torch.randn_like(p))
    gates.save_pretrained(tmp_path)
    loaded = RetentionGates.from_pretrained(tmp_path, model=llama.model)

    assert loaded.config == gates.config
    want = gates.state_dict()
    got = loaded.state_dict()
    assert got.keys() == want.keys()
    assert len([k for k in got if k.startswith("readouts.")]) == (2 if tied else 6)
    assert all(torch.equal(got[k], want[k]) for k in want)
    record = json.loads((tmp_path / "retention_gates.json").read_text())
    assert record == {
        "format": "mmretain-retention-gates",
        "model_family": "llama",
        "hidden_size": 64,
        "num_layers": 3,
        "num_kv_heads": 2,
        "tied": tied,
        "width": WIDTH,
        "budget": None,
        "allocation": None,
        "hidden_layers": 2,
        "activation": "silu",
        "distance_offset": 0,
    }


def test_gates_in_a_model_they_do_not_fit_name_both_shapes(tmp_path, llama):
    make_gates(llama.model).save_pretrained(tmp_path)
    other = LlamaForCausalLM(
        LlamaConfig(**dict(TEXT, hidden_size=32, num_hidden_layers=2, num_key_value_heads=4))
    )
    both = r"llama \(hidden 64, 3 layers, 2 KV heads\).*llama \(hidden 32, 2 layers, 4 KV heads\)"
    with pytest.raises(GatesMismatchError, match=both) as raised:
        RetentionGates.from_pretrained(tmp_path, model=other)
    assert isinstance(raised.value, ValueError)
    policy = GlobalRetention(gates=str(tmp_path))
    with pytest.raises(GatesMismatchError, match=both), mmretain.retain(other, policy=policy):
        pass
    assert other.config._attn_implementation == "sdpa"


def test_global_policy_refuses_untied_gates(llama):
    policy = GlobalRetention(gates=make_gates(llama.model, tied=False))
    with (
        pytest.raises(GatesMismatchError, match="needs tied gates"),
        mmretain.retain(llama.model, policy=policy),
    ):
        pass


def test_missing_shipped_gates_name_the_path_and_the_command(tmp_path, llama):
    llama.model.save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    expected = f"{tmp_path / 'retention_gates'} does not exist.*mmretain train-gates"
    with pytest.raises(GatesNotFoundError, match=expected), mmretain.retain(model, policy="global"):
        pass


# -- training ------------------------------------------------------------------------------------
def test_twenty_steps_lower_the_loss(tmp_path, llama):
    batches = random_token_batches(4)
    kwargs = dict(budget=8, tied=True, width=WIDTH, lr=5e-2, progress=False)
    before = train_gates(llama.model, batches, steps=0, out=tmp_path / "init", **kwargs)
    after = train_gates(llama.model, batches, steps=20, out=tmp_path / "trained", **kwargs)

    def loss(gates) -> float:
        with torch.no_grad():
            terms = [
                distillation_loss(llama.model, gates, b, budget=8, global_capacity=True)
                for b in batches
            ]
            return sum(t.total.item() for t in terms)

    assert loss(after) < 0.9 * loss(before)
    assert all(p.requires_grad for p in llama.model.parameters())  # unfrozen again
    assert RetentionGates.from_pretrained(tmp_path / "trained").config.budget == 8


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path, llama):
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    llama.model.save_pretrained(model_dir)
    data_dir.mkdir()
    with (data_dir / "samples.jsonl").open("w") as lines:
        for batch in random_token_batches(3, length=24):
            for row in range(2):
                sample = {name: value[row].tolist() for name, value in batch.items()}
                lines.write(json.dumps(sample) + "\n")
    args = ["--model", str(model_dir), "--data", str(data_dir), "--budget", "6", "--untied"]
    args += ["--width", str(WIDTH), "--lr", "1e-2", "--checkpoint-every", "1"]
    out = tmp_path / "gates"
    assert train_gates_cli([*args, "--steps", "2", "--out", str(out)]) == 0
    assert train_gates_cli([*args, "--steps", "4", "--out", str(out), "--resume"]) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000004"]

    straight = train_gates(
        LlamaForCausalLM.from_pretrained(model_dir),
        BatchDirectory(data_dir),
        budget=6,
        tied=False,
        steps=4,
        out=tmp_path / "straight",
        lr=1e-2,
        width=WIDTH,
        progress=False,
    )
    resumed = RetentionGates.from_pretrained(out).state_dict()
    assert all(torch.equal(resumed[k], v) for k, v in straight.state_dict().items())


def write_jsonl(directory, batches) -> None:
    directory.mkdir()
    with (directory / "samples.jsonl").open("w") as lines:
        for batch in batches:
            for row in range(batch["input_ids"].shape[0]):
                sample = {name: value[row].tolist() for name, value in batch.items()}
                lines.write(json.dumps(sample) + "\n")


def test_two_processes_under_accelerate_launch_equal_one_process(tmp_path, llama):
    """Two CPU processes (gloo), each taking every other batch, with the gates' gradients
    averaged, train the same gates as one process accumulating both batches of each step."""
    model_dir, data_dir, out = tmp_path / "model", tmp_path / "data", tmp_path / "two"
    llama.model.save_pretrained(model_dir)
    write_jsonl(data_dir, random_token_batches(2, length=24))  # four samples: two steps
    # accelerate's multi-process launcher (torchrun) on CPUs: gloo, as ACCELERATE_USE_CPU says.
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmretain.gates"]
    args = ["--model", str(model_dir), "--data", str(data_dir), "--budget", "6", "--steps", "2"]
    args += ["--width", str(WIDTH), "--lr", "1e-2", "--out", str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch, *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    def one_process(accumulate: int) -> dict[str, torch.Tensor]:
        gates = train_gates(
            LlamaForCausalLM.from_pretrained(model_dir),
            BatchDirectory(data_dir),
            **dict(budget=6, tied=True, steps=2, lr=1e-2, width=WIDTH, progress=False),
            out=tmp_path / f"one-{accumulate}",
            accumulate=accumulate,
        )
        return gates.state_dict()

    two = RetentionGates.from_pretrained(out).state_dict()
    accumulated = one_process(accumulate=2)
    for name, value in accumulated.items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-7)
    # Not vacuous: one batch per step (what a single process without accumulation does) differs.
    single = one_process(accumulate=1)
    assert not all(torch.allclose(two[name], value) for name, value in single.items())


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    args = ["--model", "unused", "--data", str(tmp_path / "nowhere"), "--budget", "8"]
    code = train_gates_cli([*args, "--steps", "1", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and len(err.splitlines()) == 1


# -- gated policies ------------------------------------------------------------------------------
def test_global_with_shipped_gates_and_full_budget_is_vanilla_generate(tmp_path, vlm):
    vlm.model.save_pretrained(tmp_path)
    make_gates(vlm.model, bias=0.0).save_pretrained(tmp_path / "retention_gates")
    model = type(vlm.model).from_pretrained(tmp_path).eval()
    inputs = vlm.prompt([6, "image", 8])
    vanilla = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    with mmretain.retain(model, policy="global", budget=4096) as run:
        retained = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(retained, vanilla)
    assert run.stats.entries_kept == run.stats.tokens_seen * run.n_layers * run.n_heads


@pytest.mark.parametrize(("policy", "allocation"), [("global", "global"), ("trimkv", "uniform")])
def test_eviction_keeps_the_highest_log_beta_times_age(llama, policy, allocation):
    model, budget, length = llama.model, 10, 40
    gates = make_gates(model, tied=policy == "global", bias=0.0, seed=5)
    ids = llama.text(length)[None]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        # score of entry (layer, head, i) after the prompt: log β_i · (t − i), t the position
        # of the next query, the first that eviction keeps entries for
        age = (length - torch.arange(length)).float()
        scores = torch.stack(
            [
                gates.log_retention(i, layer.input_layernorm(hidden[i]))[0] * age
                for i, layer in enumerate(model.model.layers)
            ]
        )  # [layers, heads, T]
    expected = top_entries(scores, budget, allocation)

    config = mmretain.RetentionConfig(
        policy=policy,
        policy_kwargs={"gates": gates},
        budget=budget,
        allocation=allocation,
        sink=0,
        recent=0,
        protect_turn=False,
        buffer=0,
    )
    with mmretain.retain(model, config) as run, torch.no_grad():
        cache = run.new_cache()
        model(input_ids=ids, **cache_kwargs(cache), use_cache=True)
    assert cache.evictions == 1
    assert kept_positions(cache) == expected


def test_global_under_a_tight_budget_streams_in_chunks_and_decodes(vlm):
    gates = make_gates(vlm.model, bias=0.0)
    inputs = vlm.prompt([20, "image", 30])
    config = mmretain.RetentionConfig(
        policy=GlobalRetention(gates=gates),
        budget=40,
        chunk_tokens=16,
        buffer=4,
        sink=2,
        recent=8,
        protect_turn=False,
    )
    with mmretain.retain(vlm.model, config) as run:
        out = vlm.model.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 10
    assert run.stats.evictions >= 2
    per_position = run.n_layers * run.n_heads
    assert run.stats.peak_bytes_held <= run.stats.bytes_full_cache
    assert run.stats.entries_kept <= (40 + 4) * per_position


def test_cli_trains_on_the_shipped_testbed_model_by_name(tmp_path, capsys):
    """``--model testbed`` is the shipped model, found offline as load() finds it."""
    args = ["--model", "testbed", "--data", "testbed", "--budget", "16", "--width", str(WIDTH)]
    assert train_gates_cli([*args, "--steps", "1", "--out", str(tmp_path / "gates")]) == 0
    assert (tmp_path / "gates" / "retention_gates.safetensors").is_file()


def test_cli_names_a_missing_model_directory(tmp_path, capsys):
    args = ["--model", str(tmp_path / "absent"), "--data", "testbed", "--budget", "8"]
    assert train_gates_cli([*args, "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "error: no model directory at" in err and len(err.splitlines()) == 1


def test_cli_refuses_an_unsupported_family_before_loading_anything(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(
        tmp_path / "gpt2"
    )
    args = ["--model", str(tmp_path / "gpt2"), "--data", "testbed", "--budget", "8"]
    assert train_gates_cli([*args, "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model_type='gpt2') is not supported" in err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"input_ids": [1, 2, 3], "target_mask": [0, 1', "is not a JSON object of token lists"),
        ('{"input_ids": [1, 2, 3]}', "lacks ['target_mask']"),
        ('{"input_ids": [1, 2], "target_mask": [1]}', "must have the shape of input_ids"),
    ],
)
def test_cli_names_a_malformed_batch_before_training(tmp_path, capsys, line, message):
    data = tmp_path / "data"
    data.mkdir()
    good = '{"input_ids": [1, 2, 3], "target_mask": [0, 1, 1]}'
    (data / "batches.jsonl").write_text(f"{good}\n{line}\n")
    args = ["--model", "unused", "--data", str(data), "--budget", "8"]
    assert train_gates_cli([*args, "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "batches.jsonl:2" in err and message in err


def test_a_safetensors_batch_is_checked_from_its_header(tmp_path):
    from safetensors.torch import save_file

    from mmretain.gates import BatchDirectory

    ids = torch.ones(2, 5, dtype=torch.long)
    save_file({"input_ids": ids, "target_mask": ids.clone()}, tmp_path / "a.safetensors")
    assert [b["input_ids"].shape for b in BatchDirectory(tmp_path)] == [(2, 5)]
    save_file({"input_ids": ids, "target_mask": ids[:, :3].clone()}, tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match=r"b\.safetensors: target_mask \(2, 3\) must have"):
        BatchDirectory(tmp_path)
    (tmp_path / "c.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "b.safetensors").unlink()
    with pytest.raises(ValueError, match=r"batch .*c\.safetensors cannot be read"):
        BatchDirectory(tmp_path)
