"""The test-bed training script: runs, lowers the loss, writes a loadable checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmretain.testbed.train import train
from mmretain.testbed.train_config import TrainConfig


@pytest.mark.parametrize("arch", ["qwen2vl", "llava-onevision"])
def test_twenty_steps_lower_the_loss_and_save_a_checkpoint(arch, tmp_path):
    config = TrainConfig(
        arch=arch,
        size="tiny",
        steps=20,
        lr=3e-3,
        warmup=2,
        mix={"video-needle": 1.0},
        batch={"video-needle": 8},
        eval_samples=2,
    )
    record = train(config, tmp_path)
    losses = record["losses"]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert json.loads((tmp_path / "training.json").read_text())["steps_done"] == 20
    processor = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, local_files_only=True)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)


def test_gate_training_batches_are_deterministic_and_mark_the_answers(tmp_path):
    from checkpoints import write_testbed

    from mmretain.testbed import training_batches
    from mmretain.testbed.tokenizer import IM_END

    path = write_testbed(tmp_path / "model")
    batches = training_batches(path, seed=3)
    first, again = next(iter(batches)), next(iter(batches))
    assert first.keys() == again.keys() and "labels" not in first
    for name, value in first.items():
        assert torch.equal(value, again[name]), name
    # Each row's marked tokens are its assistant replies: words, each reply closed by IM_END.
    tokenizer = batches.processor.tokenizer
    for ids, mask in zip(first["input_ids"], first["target_mask"], strict=True):
        marked = tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
        assert marked and marked[-1] == IM_END
        assert all(token.isalpha() or token == IM_END for token in marked)
