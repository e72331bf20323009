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

Token ids are integers [batch, tokens]; media given as flattened patches (``pixel_values`` or
``pixel_values_videos`` of rank 2) come with their grid (``image_grid_thw``, ``video_grid_thw``).

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
# Media as flattened patches [patches, dim], and the grid that says how they lay out.
GRIDS = {"pixel_values": "image_grid_thw", "pixel_values_videos": "video_grid_thw"}


class BatchDirectory:
    """The batches stored in a directory (format in the module docstring); re-iterable.

    Every batch is checked when the directory is opened; `check_vocabulary` then checks the
    token ids against a model's vocabulary.
    """

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
        # a safetensors file by its header and its ids and grids (the media load when training
        # reaches it). The range of each batch's ids is kept for `check_vocabulary`.
        self.id_ranges: dict[str, tuple[int, int]] = {}
        for path in self.files:
            if path.suffix == ".safetensors":
                self._check(_read(path, _small_tensors), str(path))
            else:
                for _ in _json_batches(path, self._check):
                    pass

    def _check(self, batch: dict[str, torch.Tensor | tuple[int, ...]], where: str) -> None:
        _check(batch, where)
        ids = batch["input_ids"]
        if ids.numel():
            self.id_ranges[where] = (int(ids.min()), int(ids.max()))

    def check_vocabulary(self, vocab_size: int) -> None:
        """Raise `GatesTrainingError` naming the first batch with an id outside [0, vocab_size)."""
        for where, (low, high) in self.id_ranges.items():
            _check_id_range(low, high, vocab_size, f"batch {where}")

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


def _small_tensors(path: Path) -> dict[str, torch.Tensor | tuple[int, ...]]:
    """A safetensors batch's ids and grids as tensors, its other tensors (media) as shapes."""
    small = {"input_ids", *GRIDS.values()}
    with safe_open(path, "pt") as tensors:
        return {
            name: tensors.get_tensor(name)
            if name in small
            else tuple(tensors.get_slice(name).get_shape())
            for name in tensors.keys()  # noqa: SIM118
        }


def _json_batches(path: Path, check=None) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of a jsonl file, each passed to ``check(batch, where)`` (default `_check`)."""
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                where = f"{path}:{number}"
                batch = _json_batch(line, where)
                (check or _check)(batch, where)
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


def _check(batch: dict[str, torch.Tensor | tuple[int, ...]], where: str) -> None:
    """A batch (its tensors, or of some only their shapes) has integer input_ids [batch, tokens],
    a target_mask of their shape, and a grid beside media given as flattened patches."""
    missing = {"input_ids", TARGET_MASK} - set(batch)
    if missing:
        raise GatesTrainingError(f"batch {where} lacks {sorted(missing)}")
    shapes = {name: _shape(value) for name, value in batch.items()}
    ids = batch["input_ids"]
    if len(shapes["input_ids"]) != 2:
        raise GatesTrainingError(
            f"batch {where}: input_ids {shapes['input_ids']} must be [batch, tokens]: a JSON "
            "line holds one flat list of ids, a safetensors batch a 2-D tensor"
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise GatesTrainingError(
            f"batch {where}: input_ids are {ids.dtype}, not integers; store token ids as whole "
            "numbers (int64)"
        )
    if shapes[TARGET_MASK] != shapes["input_ids"]:
        raise GatesTrainingError(
            f"batch {where}: target_mask {shapes[TARGET_MASK]} must have the shape "
            f"of input_ids {shapes['input_ids']}"
        )
    for media, grid in GRIDS.items():
        if media in shapes and len(shapes[media]) == 2:
            _check_grid(shapes[media], batch.get(grid), f"batch {where}: {media}", grid)


def _check_id_range(low: int, high: int, vocab_size: int, where: str) -> None:
    if low < 0 or high >= vocab_size:
        raise GatesTrainingError(
            f"{where} holds token ids from {low} to {high}, outside the model's vocabulary (0 to "
            f"{vocab_size - 1}); tokenize the data with this model's tokenizer"
        )


def _check_grid(patches: tuple[int, ...], grid: torch.Tensor | None, what: str, name: str) -> None:
    """Flattened patches [n, dim] come with a grid [media, 3] whose t·h·w sum to n."""
    if grid is None:
        raise GatesTrainingError(
            f"{what} are flattened patches {patches} without {name}; save the processor's "
            f"{name} with them"
        )
    if grid.dim() != 2 or grid.shape[1] != 3 or int(grid.prod(dim=1).sum()) != patches[0]:
        raise GatesTrainingError(
            f"{what}: {name} {tuple(grid.shape)} does not describe its {patches[0]} patches; "
            "save the processor's output unchanged"
        )


def _shape(value: torch.Tensor | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else value


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
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    skip: int = 0,
    shard: tuple[int, int] = (0, 1),
    vocab_size: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless stream over ``batches``, starting again at the end of a re-iterable source.

    Process ``rank`` of ``world`` (``shard``) takes every world-th batch; the first ``skip``
    steps' batches are passed over, so a resumed run sees what an uninterrupted one would have.
    A one-shot iterator that runs out raises, naming how far it got. Each batch taken is checked
    as `BatchDirectory` checks its files (and its ids against ``vocab_size``), so batches given
    in code fail with the same message, not deep inside the model.
    """
    rank, world = shard
    index = 0
    while True:
        produced = False
        for batch in batches:
            produced = True
            if index >= skip * world and index % world == rank:
                where = f"training batch {index}"
                if not isinstance(batch, dict):
                    raise GatesTrainingError(
                        f"{where} is a {type(batch).__name__}, not a dict of tensors; see "
                        "mmretain.gates.data for the format"
                    )
                _check(batch, where)
                ids = batch["input_ids"]
                if vocab_size is not None and ids.numel():
                    _check_id_range(int(ids.min()), int(ids.max()), vocab_size, where)
                yield batch
            index += 1
        if not produced or iter(batches) is batches:
            raise GatesTrainingError(
                f"the training data ran out after {index} batches; pass a re-iterable source "
                "(a list, a BatchDirectory) or one with enough batches for every step"
            )
