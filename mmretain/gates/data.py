"""Training data for the gates: any iterable of batches, plus two sources of them.

A batch is a dict of the model's forward inputs (``input_ids`` required; ``attention_mask``,
``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``, ... as the model needs) plus
``target_mask`` [b, T]: 1 where the token is one the loss is averaged over (an answer), 0 for
prompt, media and padding.

`BatchDirectory` reads a directory, in file-name order:

- ``*.jsonl``: one sample per line, ``{"input_ids": [...], "target_mask": [...]}`` with an
  optional ``"attention_mask"``; each line is a batch of one;
- ``*.safetensors``: one ready batch per file, tensors named as above (any batch size, media
  inputs included).

`testbed_batches` draws batches from the test-bed suites of `mmretain.testbed`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

TARGET_MASK = "target_mask"


class BatchDirectory:
    """The batches stored in a directory (format in the module docstring); re-iterable."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"training data directory {self.directory} does not exist")
        self.files = sorted(
            p for p in self.directory.iterdir() if p.suffix in (".jsonl", ".safetensors")
        )
        if not self.files:
            raise FileNotFoundError(
                f"{self.directory} holds no *.jsonl or *.safetensors batches; "
                "see mmretain.gates.data for the format"
            )
        # Every batch is read once now: a malformed one fails before training, naming itself.
        for _ in self:
            pass

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for path in self.files:
            if path.suffix == ".safetensors":
                try:
                    batch = load_file(path)
                except Exception as error:  # safetensors raises its own error types
                    raise ValueError(f"batch {path} cannot be read: {error}") from None
                yield _checked(batch, str(path))
                continue
            with path.open() as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        yield _checked(_json_batch(line, f"{path}:{number}"), f"{path}:{number}")


def _json_batch(line: str, where: str) -> dict[str, torch.Tensor]:
    """One JSON line as a batch of one, or a ValueError naming the file and line."""
    try:
        sample = json.loads(line)
        return {name: torch.tensor([values]) for name, values in sample.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"batch {where} is not a JSON object of token lists: {error}") from None


def _checked(batch: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    missing = {"input_ids", TARGET_MASK} - set(batch)
    if missing:
        raise ValueError(f"batch {where} lacks {sorted(missing)}")
    if batch[TARGET_MASK].shape != batch["input_ids"].shape:
        raise ValueError(
            f"batch {where}: target_mask {tuple(batch[TARGET_MASK].shape)} must have the shape "
            f"of input_ids {tuple(batch['input_ids'].shape)}"
        )
    return batch


def testbed_batches(model_path: str, *, seed: int = 0) -> Iterable[dict[str, torch.Tensor]]:
    """Training batches of the test-bed suites for the test-bed model at ``model_path``.

    The suites belong to `mmretain.testbed`, which provides
    ``training_batches(model_path, seed=...)``: batches in the format of this module.
    """
    try:
        from .. import testbed
    except ImportError as error:
        raise ImportError(
            "the test-bed suites (mmretain.testbed) are not part of this installation; "
            "pass a directory of batches instead (see mmretain.gates.data)"
        ) from error
    if not hasattr(testbed, "training_batches"):
        raise ImportError(
            "mmretain.testbed provides no training_batches(model_path, seed=...); "
            "pass a directory of batches instead (see mmretain.gates.data)"
        )
    return testbed.training_batches(model_path, seed=seed)


def batch_stream(
    batches: Iterable[dict[str, torch.Tensor]], *, skip: int = 0, shard: tuple[int, int] = (0, 1)
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless stream over ``batches``, starting again at the end of a re-iterable source.

    Process ``rank`` of ``world`` (``shard``) takes every world-th batch; the first ``skip``
    steps' batches are passed over, so a resumed run sees what an uninterrupted one would have.
    A one-shot iterator that runs out raises, naming how far it got.
    """
    rank, world = shard
    index = 0
    while True:
        produced = False
        for batch in batches:
            produced = True
            if index >= skip * world and index % world == rank:
                yield batch
            index += 1
        if not produced or iter(batches) is batches:
            raise ValueError(
                f"the training data ran out after {index} batches; pass a re-iterable source "
                "(a list, a BatchDirectory) or one with enough batches for every step"
            )
