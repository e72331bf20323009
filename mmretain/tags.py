"""What each position of a sequence is: its modality and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

import torch


class Modality(IntEnum):
    """Where a cached entry came from. Stored as int8 codes next to every entry."""

    TEXT = 0
    IMAGE = 1
    VIDEO = 2
    GENERATED = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass
class TokenTags:
    """Per-position tags of one batch of sequences, all tensors of shape [batch, seq].

    ``media``, ``frame``, ``row`` and ``col`` are -1 where they do not apply (text); ``turn`` counts
    user turns from 0 and is -1 where the turn is unknown.
    """

    modality: torch.Tensor
    media: torch.Tensor
    frame: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    turn: torch.Tensor

    @classmethod
    def text(cls, batch: int, length: int, modality: Modality = Modality.TEXT) -> TokenTags:
        """Tags for plain text (or generated) positions."""
        modality_codes = torch.full((batch, length), int(modality), dtype=torch.int8)
        # Separate tensors: adapters write media, frame, row and col independently.
        fields = [torch.full((batch, length), -1, dtype=torch.int32) for _ in range(5)]
        return cls(modality_codes, *fields)

    @property
    def shape(self) -> torch.Size:
        return self.modality.shape

    def __getitem__(self, index) -> TokenTags:
        return TokenTags(*(getattr(self, f.name)[index] for f in fields(self)))

    @classmethod
    def cat(cls, parts: list[TokenTags]) -> TokenTags:
        """Join tags along the sequence dimension."""
        return cls(*(torch.cat([getattr(p, f.name) for p in parts], dim=1) for f in fields(cls)))

    def counts(self) -> dict[str, int]:
        """Number of positions per modality name, over the whole batch."""
        return {m.label: int((self.modality == m).sum()) for m in Modality}
