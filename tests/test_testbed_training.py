"""The test-bed training script: runs, lowers the loss, writes a loadable checkpoint."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmretain.testbed.train import TrainConfig, train


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
