"""Greedy answers and accuracy: the model's next word after the generation prompt."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

import torch

from .batching import encode, last_positions
from .suites import Sample


@torch.no_grad()
def predict(model: torch.nn.Module, processor: Any, samples: Sequence[Sample]) -> list[str]:
    """The greedy first word of the model's reply to each sample (one forward pass).

    Every answer is one word and one token, so this is what ``generate`` would start with.
    """
    inputs = encode(processor, samples, training=False)
    logits = model(**inputs).logits
    rows = torch.arange(logits.shape[0])
    tokens = logits[rows, last_positions(inputs)].argmax(dim=-1)
    return processor.tokenizer.convert_ids_to_tokens(tokens.tolist())


def batched(items: Iterable[Sample], size: int):
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def accuracy(
    model: torch.nn.Module, processor: Any, samples: Iterable[Sample], batch_size: int = 16
) -> float:
    """The fraction of samples whose greedy answer is right."""
    was_training = model.training
    model.eval()
    right = total = 0
    for batch in batched(samples, batch_size):
        answers = predict(model, processor, batch)
        right += sum(a == s.answer for a, s in zip(answers, batch, strict=True))
        total += len(batch)
    model.train(was_training)
    return right / max(total, 1)
