"""Gates in the TRIM-KV authors' file layout (written here, no trimkv install) import into
mmretain's format, compute what their gate modules compute, and evict what their caches evict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import kept_positions, make_llama, top_entries
from transformers.activations import ACT2FN

import mmretain
from mmretain.compat import cache_kwargs
from mmretain.gates import RetentionGates
from mmretain.gates.import_cli import main
from mmretain.testbed import model_path

INTERMEDIATE = 24
MEMORY = 10


def trimkv_state(config, gate_type: str, prefix: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random gates keyed as trimkv's state dict filtered to the gates; rg10's readout and bias
    are one tensor shared by every layer, as its tied training leaves them."""
    text = config.get_text_config()
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.3

    shared = {
        "w": rand(text.num_key_value_heads, INTERMEDIATE),
        "b": rand(text.num_key_value_heads),
    }
    state = {}
    for layer in range(text.num_hidden_layers):
        key = f"{prefix}layers.{layer}.self_attn.retention_gate."
        state[key + "linear1.weight"] = rand(INTERMEDIATE, text.hidden_size)
        state[key + "linear1.bias"] = rand(INTERMEDIATE)
        if gate_type == "rg":
            state[key + "linear2.weight"] = rand(text.num_key_value_heads, INTERMEDIATE)
            state[key + "bias"] = rand(text.num_key_value_heads)
        else:
            state[key + "linear2.weight"] = rand(INTERMEDIATE, INTERMEDIATE)
            state[key + "linear2.bias"] = rand(INTERMEDIATE)
            state[key + "linear3.weight"] = shared["w"]
            state[key + "bias"] = shared["b"]
    return state


def write_checkpoint(folder: Path, state: dict, gate_type: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "trimkv_weights.pth")
    record = {
        "base_model": "base",
        "retention_gate": gate_type,
        "retention_gate_intermediate_size": INTERMEDIATE,
        "memory_size": MEMORY,
        "trainable_params": "self_attn.retention_gate",
    }
    (folder / "config.json").write_text(json.dumps(record))
    return folder


def their_log_beta(state: dict, prefix: str, layer: int, x: torch.Tensor, act) -> torch.Tensor:
    """trimkv's RetentionGate / RetentionGate10 forward, written out: [b, q, kv_heads]."""
    p = {
        k.removeprefix(f"{prefix}layers.{layer}.self_attn.retention_gate."): v
        for k, v in state.items()
    }
    out = act(F.linear(x, p["linear1.weight"], p["linear1.bias"]))
    if "linear3.weight" in p:
        out = act(F.linear(out, p["linear2.weight"], p["linear2.bias"]))
        out = F.linear(out, p["linear3.weight"])
    else:
        out = F.linear(out, p["linear2.weight"])
    return F.logsigmoid(out + p["bias"])


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    make_llama().model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("base", "prefix"), [("llama", "model."), ("testbed", "model.language_model.")]
)
@pytest.mark.parametrize("gate_type", ["rg", "rg10"])
def test_imported_gates_compute_what_trimkv_gates_compute(
    tmp_path, llama_dir, base, prefix, gate_type, capsys
):
    from transformers import AutoConfig

    model_dir = llama_dir if base == "llama" else model_path("testbed")
    config = AutoConfig.from_pretrained(model_dir)
    state = trimkv_state(config, gate_type, prefix)
    checkpoint = write_checkpoint(tmp_path / "ckpt", state, gate_type)
    out = tmp_path / "gates"
    assert (
        main(["import-trimkv", str(checkpoint), "--model", str(model_dir), "--out", str(out)]) == 0
    )
    assert "use them with policy" in capsys.readouterr().out

    gates = RetentionGates.from_pretrained(out)
    text = config.get_text_config()
    assert gates.config.tied == (gate_type == "rg10")
    assert gates.config.budget == MEMORY and gates.config.distance_offset == 1
    assert gates.config.allocation == (None if gate_type == "rg10" else "uniform")
    x = torch.randn(2, 5, text.hidden_size)
    act = ACT2FN[text.hidden_act]
    for layer in range(text.num_hidden_layers):
        want = their_log_beta(state, prefix, layer, x, act).transpose(1, 2)
        torch.testing.assert_close(gates.log_retention(layer, x), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("gate_type", "allocation"), [("rg", "uniform"), ("rg10", "global")])
def test_imported_gates_evict_what_trimkv_caches_evict(tmp_path, llama_dir, gate_type, allocation):
    """TrimKVCache keeps each head's top M of log β · (seen + 1 − i); PagedTrimKVCache the top
    L·H·M over every layer and head: `trimkv` (uniform) and `global` with the imported gates."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    state = trimkv_state(model.config, gate_type, "model.")
    checkpoint = write_checkpoint(tmp_path / "ckpt", state, gate_type)
    main(["import-trimkv", str(checkpoint), "--model", str(llama_dir)])
    length = 40
    ids = torch.randint(3, 100, (1, length), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        act = ACT2FN[model.config.hidden_act]
        distance = (length + 1 - torch.arange(length)).float()  # q_idx = seen + 1
        scores = torch.stack(
            [
                their_log_beta(state, "model.", i, layer.input_layernorm(hidden[i]), act)[0].T
                * distance
                for i, layer in enumerate(model.model.layers)
            ]
        )  # [layers, heads, T]

    config = mmretain.RetentionConfig(
        policy="global" if gate_type == "rg10" else "trimkv",
        budget=MEMORY,
        protect_turn=False,
        buffer=0,
    )
    with mmretain.retain(model, config) as run, torch.no_grad():
        assert run.allocation_mode == allocation
        cache = run.new_cache()
        model(input_ids=ids, **cache_kwargs(cache), use_cache=True)
    assert kept_positions(cache) == top_entries(scores, MEMORY, allocation)


def _missing_layer(state: dict) -> dict:
    return {k: v for k, v in state.items() if ".layers.2." not in k}


def _too_wide(state: dict) -> dict:
    key = "model.layers.1.self_attn.retention_gate.linear1.weight"
    return {**state, key: torch.zeros(INTERMEDIATE, 65)}


@pytest.mark.parametrize(
    ("change", "gate_type", "said"),
    [
        (_missing_layer, "rg", ["layers 0-1", "3 layers"]),  # trained for another model
        (_too_wide, "rg", ["(24, 65)", "(24, 64)"]),  # another hidden size
        (dict, "rg7", ["rg, rg10"]),  # a gate type mmretain does not know
    ],
)
def test_keys_or_shapes_that_do_not_fit_are_refused_in_one_line(
    tmp_path, llama_dir, capsys, change, gate_type, said
):
    state = change(trimkv_state(make_llama().model.config, "rg", "model."))
    checkpoint = write_checkpoint(tmp_path / "ckpt", state, gate_type)
    out = tmp_path / "out"
    argv = ["import-trimkv", str(checkpoint), "--model", str(llama_dir), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(part in err for part in said)
    assert not out.exists()


class _Planted:
    """Unpickling this writes a file: proof that a loader built it."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "ran"))


def test_a_pickle_holding_anything_but_tensors_is_refused_unread(tmp_path, llama_dir, capsys):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, {}, "rg")
    planted = tmp_path / "planted.txt"
    torch.save(
        {"model.layers.0.self_attn.retention_gate.bias": _Planted(planted)},
        folder / "trimkv_weights.pth",
    )
    assert main(["import-trimkv", str(folder), "--model", str(llama_dir)]) == 2
    assert "not a plain state dict of tensors" in capsys.readouterr().err
    assert not planted.exists()


def test_the_readme_section_runs_as_written_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    """The README's two commands, in a folder where its names are a DBTrimKV checkpoint written
    here, a copy of the test-bed model and a needle video."""
    import re
    import shlex
    import shutil

    from transformers import AutoConfig

    from mmretain.cli import main as mmretain_main
    from mmretain.testbed.video_file import write_needle_video

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("#### Using the authors' gates") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "Qwen3-VL-4B-Instruct"
    shutil.copytree(model_path("testbed"), model, ignore=shutil.ignore_patterns("retention_gates*"))
    state = trimkv_state(AutoConfig.from_pretrained(model), "rg10", "model.language_model.")
    write_checkpoint(tmp_path / "dbtrimkv-checkpoint", state, "rg10")
    write_needle_video(tmp_path / "lecture.mp4", frames=16, depth=0.5)
    for command in commands:
        assert command[0] == "mmretain"
        assert mmretain_main(command[1:]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "tied gates" in out and "policy global" in out
    assert RetentionGates.from_pretrained(model / "retention_gates").config.distance_offset == 1
