"""Where a checkpoint loads from; a hub that cannot be reached fails at once, in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmretain.errors import ModelLoadError
from mmretain.location import checkpoint_location

# Port 9 (discard) on the loopback refuses at once: the network is absent, deterministically.
NO_HUB = "http://127.0.0.1:9"


def _no_hub_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": NO_HUB, "HF_HUB_CACHE": str(tmp_path / "hub")}


def test_unreachable_hub_fails_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mmretain", "video-qa", "--demo", "--model", "Qwen/Qwen2-VL-2B"],
        capture_output=True,
        text=True,
        env=_no_hub_env(tmp_path),
        timeout=120,
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("mmretain: error: 'Qwen/Qwen2-VL-2B' is not a local directory")
    assert f"the hub ({NO_HUB}) cannot be reached" in line
    assert "hf download Qwen/Qwen2-VL-2B" in line


def test_cached_hub_model_loads_offline(tmp_path, monkeypatch):
    """A model in the hub cache loads without the network when the hub is unreachable."""
    from huggingface_hub import constants

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", NO_HUB)
    assert checkpoint_location("org/tiny") == ("org/tiny", True)
    with pytest.raises(ModelLoadError, match="not a local directory nor in the hub cache"):
        checkpoint_location("org/absent")


@pytest.mark.parametrize("name", ["/nonexistent/dir", "./missing", "~/missing-model"])
def test_a_path_that_is_not_a_directory_is_named(name):
    with pytest.raises(ModelLoadError, match="no model directory at"):
        checkpoint_location(name)


def test_testbed_names_resolve_to_shipped_directories():
    path, local = checkpoint_location("testbed-llava")
    assert local and path.endswith("llava-onevision")


def test_a_pickled_only_checkpoint_is_refused_unread(tmp_path, monkeypatch):
    """Every loader reads safetensors only: a .bin checkpoint is never unpickled."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmretain.location import load_model

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was read"))
    with pytest.raises(ModelLoadError, match=r"no file named model\.safetensors"):
        load_model(tmp_path)
