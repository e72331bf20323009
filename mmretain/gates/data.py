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
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import GatesTrainingError

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
        # Every batch is checked now, so a malformed one fails before training, naming itself:
        # a safetensors file by its header alone (its tensors load when training reaches it).
        for path in self.files:
            if path.suffix == ".safetensors":
                _check(_read(path, _header_shapes), str(path))
            else:
                for _ in _json_batches(path):
                    pass

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for path in self.files:
            if path.suffix == ".safetensors":
                yield _read(path, load_file)
            else:
                yield from _json_batches(path)


def _read(path: Path, read):
    """``read(path)``, with safetensors' own error types as a GatesTrainingError naming the file."""
    try:
        return read(path)
    except Exception as error:
        raise GatesTrainingError(f"batch {path} cannot be read: {error}") from None


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(path, "pt") as tensors:
        return {name: tuple(tensors.get_slice(name).get_shape()) for name in tensors.keys()}  # noqa: SIM118


def _json_batches(path: Path) -> Iterator[dict[str, torch.Tensor]]:
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                where = f"{path}:{number}"
                batch = _json_batch(line, where)
                _check({name: tuple(t.shape) for name, t in batch.items()}, where)
                yield batch


def _json_batch(line: str, where: str) -> dict[str, torch.Tensor]:
    """One JSON line as a batch of one, or a GatesTrainingError naming the file and line."""
    try:
        sample = json.loads(line)
        return {name: torch.tensor([values]) for name, values in sample.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise GatesTrainingError(
            f"batch {where} is not a JSON object of token lists: {error}"
        ) from None


def _check(shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """A batch (given by its tensors' shapes) has input_ids and a target_mask of their shape."""
    missing = {"input_ids", TARGET_MASK} - set(shapes)
    if missing:
        raise GatesTrainingError(f"batch {where} lacks {sorted(missing)}")
    if shapes[TARGET_MASK] != shapes["input_ids"]:
        raise GatesTrainingError(
            f"batch {where}: target_mask {shapes[TARGET_MASK]} must have the shape "
            f"of input_ids {shapes['input_ids']}"
        )


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
            raise GatesTrainingError(
                f"the training data ran out after {index} batches; pass a re-iterable source "
                "(a list, a BatchDirectory) or one with enough batches for every step"
            )
