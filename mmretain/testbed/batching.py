"""Samples to model inputs: chat template, processor, and labels on the assistant's words."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .suites import Sample, samples
from .tokenizer import IM_END, IM_START
from .train_config import TrainConfig

IGNORE = -100


def encode(processor: Any, samples: Sequence[Sample], *, training: bool) -> dict[str, Any]:
    """Processor inputs for a batch, right-padded.

    For training, the conversations go on with the answer and the follow-up questions, and
    ``labels`` mark every assistant word (and the end of its turn); otherwise they end in the
    generation prompt.
    """
    texts = [
        processor.apply_chat_template(
            s.conversation(followups=True) if training else s.messages,
            add_generation_prompt=not training,
            tokenize=False,
        )
        for s in samples
    ]
    images = [image for s in samples for image in s.images]
    videos = [video for s in samples for video in s.videos]
    inputs = processor(
        text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt"
    )
    if training:
        inputs["labels"] = assistant_labels(inputs["input_ids"], processor.tokenizer)
    return dict(inputs)


def assistant_labels(input_ids: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """``input_ids`` where the assistant speaks, ``IGNORE`` elsewhere (prompts, media, padding)."""
    start, end = tokenizer.convert_tokens_to_ids([IM_START, IM_END])
    role = tokenizer.convert_tokens_to_ids("assistant")
    labels = torch.full_like(input_ids, IGNORE)
    for b, row in enumerate(input_ids.tolist()):
        speaking = False
        for i, token in enumerate(row):
            if speaking:
                labels[b, i] = token
                speaking = token != end
            elif token == role and i > 0 and row[i - 1] == start:
                speaking = True
    return labels


def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor, tokenizer: Any) -> float:
    """How many of the labelled words (not turn ends) the model predicts, teacher-forced."""
    targets = labels[:, 1:]
    words = (targets != IGNORE) & (targets != tokenizer.convert_tokens_to_ids(IM_END))
    right = (logits[:, :-1].argmax(dim=-1) == targets) & words
    return right.sum().item() / max(words.sum().item(), 1)


def last_positions(inputs: dict[str, Any]) -> torch.Tensor:
    """Index of each row's last real token (where the next-token prediction is the answer)."""
    return inputs["attention_mask"].sum(dim=1) - 1


class TrainingBatches:
    """Endless, deterministic batches of the suites at their training lengths, in the format
    `mmretain.gates.data` trains gates on (forward inputs plus ``target_mask`` on the answers).

    Re-iterable: every pass yields the same batches, so a resumed gate run sees what an
    uninterrupted one would have.
    """

    def __init__(self, model_path: str | Path, *, seed: int = 0):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_path)
        self.seed = seed
        self.config = TrainConfig()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng(self.seed)
        names = list(self.config.mix)
        weights = np.array([self.config.mix[n] for n in names])
        drawn = dict.fromkeys(names, 0)
        while True:
            name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
            size = self.config.batch[name]
            batch = list(samples(name, size, drawn[name], split="train", seed=self.seed))
            drawn[name] += size
            inputs = encode(self.processor, batch, training=True)
            inputs["target_mask"] = (inputs.pop("labels") != IGNORE).long()
            yield inputs


def training_batches(model_path: str | Path, *, seed: int = 0) -> TrainingBatches:
    """The test-bed's gate-training data for the checkpoint at ``model_path``."""
    return TrainingBatches(model_path, seed=seed)
