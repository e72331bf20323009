"""One memory budget for the whole KV cache, and the ranking that decides what fits in it.

A cached entry is one (layer, KV head, position). ``Budget`` turns what the user asked for into a
number of entries; ``allocate`` picks which entries of one sequence stay.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Literal

import torch

BudgetKind = Literal["tokens", "fraction", "bytes"]

_ACCEPTED = 'give tokens (1024), a fraction of the prompt (0.1) or bytes ("512MiB")'

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_BYTES_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)", re.IGNORECASE)
_IEC_STEPS = ("B", "KiB", "MiB", "GiB", "TiB")


def _bad(reason: str, value: object) -> ValueError:
    return ValueError(f"budget {reason}, got {value!r}; {_ACCEPTED}")


def _floor(x: float) -> int:
    # 0.29 * 100 is 28.999999999999996 in binary floating point; users mean 29.
    return math.floor(round(x, 9))


@dataclass(frozen=True)
class Budget:
    """How much of the KV cache may be kept: a token count, a fraction of the prompt, or bytes."""

    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("tokens", "fraction", "bytes"):
            raise ValueError(f"budget kind must be tokens, fraction or bytes, got {self.kind!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real):
            raise _bad("must be a number", self.value)
        if not math.isfinite(self.value) or self.value <= 0:
            raise _bad("must be > 0", self.value)
        if self.kind == "fraction" and self.value > 1:
            raise _bad("fraction must be in (0, 1]", self.value)
        if self.kind == "tokens" and self.value != int(self.value):
            raise _bad("token count must be a whole number", self.value)

    @classmethod
    def parse(cls, value: Budget | int | float | str) -> Budget:
        """Read ``1024`` (tokens), ``0.1`` (fraction of the prompt) or ``"512MiB"`` (bytes).

        Strings holding a bare number are read like the number itself, so command-line values
        work unchanged.
        """
        if isinstance(value, Budget):
            return value
        if isinstance(value, bool):
            raise _bad("must be a number or a size", value)
        if isinstance(value, numbers.Integral):
            if value <= 0:
                raise _bad("must be > 0", value)
            return cls("tokens", float(value))
        if isinstance(value, numbers.Real):
            value = float(value)
            if math.isnan(value):
                raise _bad("must be a number, not NaN", value)
            if value <= 0:
                raise _bad("must be > 0", value)
            if value > 1:
                raise _bad("fraction must be in (0, 1] (pass an int for a token count)", value)
            return cls("fraction", value)
        if isinstance(value, str):
            return cls._parse_str(value)
        raise _bad("must be an int, a float or a size string", value)

    @classmethod
    def _parse_str(cls, text: str) -> Budget:
        stripped = text.strip()
        if re.fullmatch(r"[+-]?\d+", stripped):
            try:
                return cls.parse(int(stripped))
            except ValueError:
                raise _bad("must be > 0", text) from None
        if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)", stripped):
            try:
                return cls.parse(float(stripped))
            except ValueError:
                raise _bad("must be > 0 and a fraction at most 1", text) from None
        match = _BYTES_RE.fullmatch(stripped)
        if match is None:
            raise _bad("could not be read", text)
        number, unit = match.groups()
        scale = _UNITS.get(unit.lower())
        if scale is None:
            units = ", ".join(sorted({u.upper().replace("I", "i") for u in _UNITS}))
            raise ValueError(
                f"budget has unknown unit {unit!r} in {text!r}; use one of {units}; {_ACCEPTED}"
            )
        size = float(number) * scale
        if size <= 0:
            raise _bad("must be > 0", text)
        return cls("bytes", size)

    def entries(self, tokens: int, n_layers: int, n_heads: int, bytes_per_entry: int) -> int:
        """Number of (layer, head, position) entries this budget allows when a fraction is
        taken of ``tokens``."""
        per_position = n_layers * n_heads
        if self.kind == "tokens":
            return int(self.value) * per_position
        if self.kind == "fraction":
            # Every layer and head keeps at least one position, or attention has nothing to read.
            return max(_floor(self.value * tokens), 1) * per_position
        if bytes_per_entry <= 0:
            raise ValueError(f"bytes_per_entry must be > 0, got {bytes_per_entry}")
        return _floor(self.value / bytes_per_entry)

    def __str__(self) -> str:
        if self.kind == "tokens":
            return f"{int(self.value)} tokens"
        if self.kind == "fraction":
            return f"{self.value:g} of the prompt ({self.value * 100:g}%)"
        size, step = self.value, 0
        while size >= 1024 and step < len(_IEC_STEPS) - 1:
            size /= 1024
            step += 1
        return f"{size:.4g} {_IEC_STEPS[step]}"


ALLOCATIONS = ("global", "layer", "uniform")
Allocation = Literal["global", "layer", "uniform"]


def _groups(
    layer: torch.Tensor, head: torch.Tensor, mode: str, n_layers: int, n_heads: int
) -> tuple[torch.Tensor, int]:
    """Which share each entry is paid from under ``mode``, and how many shares there are."""
    if mode == "global":
        return torch.zeros_like(layer, dtype=torch.long), 1
    if mode == "layer":
        return layer.long(), n_layers
    return layer.long() * n_heads + head.long(), n_layers * n_heads


def _protection_room(
    layer: torch.Tensor, head: torch.Tensor, capacity: int, mode: str, n_layers: int, n_heads: int
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Each entry's share under ``mode``, the number of shares, and what each share may spend on
    protections: half of it, rounded down, so the ranking always chooses at least half of every
    share and a larger budget never leaves it fewer slots."""
    group, n_groups = _groups(layer, head, mode, n_layers, n_heads)
    return group, n_groups, _shares(capacity, n_groups, layer.device) // 2


def protection_fits(
    protected: torch.Tensor,
    layer: torch.Tensor,
    head: torch.Tensor,
    capacity: int,
    *,
    mode: Allocation,
    n_layers: int,
    n_heads: int,
) -> bool:
    """Whether the ``protected`` entries fit in half of every share of ``capacity``."""
    group, n_groups, room = _protection_room(layer, head, capacity, mode, n_layers, n_heads)
    return bool((torch.bincount(group[protected.bool()], minlength=n_groups) <= room).all())


def latest_that_fit(
    candidates: torch.Tensor,
    positions: torch.Tensor,
    layer: torch.Tensor,
    head: torch.Tensor,
    capacity: int,
    *,
    mode: Allocation,
    n_layers: int,
    n_heads: int,
) -> torch.Tensor:
    """The ``candidates`` of latest ``positions`` that fit in half of every share: a question
    too long to protect whole keeps its last tokens, those that end it and are nearest the
    answer."""
    group, n_groups, room = _protection_room(layer, head, capacity, mode, n_layers, n_heads)
    members = candidates.bool().nonzero().squeeze(1)
    latest_first = members[torch.sort(positions[members], descending=True, stable=True).indices]
    in_group = _group_order(latest_first, group)
    member = torch.ones(in_group.shape, dtype=torch.bool, device=candidates.device)
    rank = _rank_in_group(member, group[in_group], n_groups)
    fits = torch.zeros_like(candidates, dtype=torch.bool)
    fits[in_group[rank < room[group[in_group]]]] = True
    return fits


def _shares(capacity: int, n_groups: int, device: torch.device) -> torch.Tensor:
    """Split ``capacity`` evenly; the remainder goes one each to the lowest group indices."""
    shares = torch.full((n_groups,), capacity // n_groups, dtype=torch.long, device=device)
    shares[: capacity % n_groups] += 1
    return shares


def _rank_normalize(scores: torch.Tensor, head_group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Each score becomes (group size - rank) / group size inside its (layer, head) group.

    Rank 0 is the best; equal scores rank by position in the input. Empty slots stay ``-inf``.
    """
    # One sort per group: sorting the whole cache by score and then by group took about 1.6x
    # as long at 52K entries, and an eviction while decoding ranks every entry of the cache.
    by_group = torch.sort(head_group, stable=True).indices
    sizes = torch.bincount(head_group, minlength=n_groups).tolist()
    present = torch.bincount(head_group[scores > -math.inf], minlength=n_groups).tolist()
    normalized = torch.full(scores.shape, -math.inf, dtype=torch.float64, device=scores.device)
    for members, size in zip(torch.split(by_group, sizes), present, strict=True):
        if size:
            # Empty slots score -inf, so they sort after every present entry.
            best_first = torch.sort(scores[members], descending=True, stable=True).indices
            rank = torch.arange(size, device=scores.device, dtype=torch.float64)
            normalized[members[best_first[:size]]] = (size - rank) / size
    return normalized


def _best(scores: torch.Tensor, candidate: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best-scoring candidates, equal scores going to the earlier entry: the set that
    a stable best-first sort admits, found by selecting the worst ones to drop. An eviction
    while decoding drops a few entries from a large cache, so this costs far less than a sort."""
    n_candidates = int(candidate.sum())
    if k >= n_candidates:
        return candidate
    if k <= 0:
        return torch.zeros_like(candidate)
    # The k-th best candidate score is the (n - k + 1)-th worst; others never rank below it.
    worst_first = scores.masked_fill(~candidate, math.inf)
    threshold = torch.topk(worst_first, n_candidates - k + 1, largest=False).values[-1]
    above = candidate & (scores > threshold)
    tied = candidate & (scores == threshold)
    return above | (tied & (torch.cumsum(tied, 0) <= k - int(above.sum())))


def _group_order(by_score: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Indices sorted by (group, -score, index), given the indices sorted by (-score, index)."""
    return by_score[torch.sort(group[by_score], stable=True).indices]


def _rank_in_group(member: torch.Tensor, s_group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """For entries already in group order: how many members of the same group come before."""
    before = torch.cumsum(member, 0) - member.long()
    per_group = torch.bincount(s_group[member], minlength=n_groups)
    return before - (torch.cumsum(per_group, 0) - per_group)[s_group]


def _check_inputs(
    scores: torch.Tensor,
    layer: torch.Tensor,
    head: torch.Tensor,
    capacity: int,
    mode: str,
    n_layers: int,
    n_heads: int,
    protected: torch.Tensor | None,
    modality: torch.Tensor | None,
    modality_caps: dict[int, int] | None,
) -> None:
    if mode not in ALLOCATIONS:
        raise ValueError(f"allocation mode must be one of {', '.join(ALLOCATIONS)}, got {mode!r}")
    if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 0:
        raise ValueError(f"capacity must be a whole number of entries >= 0, got {capacity!r}")
    if n_layers < 1 or n_heads < 1:
        raise ValueError(f"n_layers and n_heads must be >= 1, got {n_layers} and {n_heads}")
    if scores.dim() != 1 or not scores.is_floating_point():
        raise ValueError(f"scores must be a 1-D float tensor, got {scores.dtype} {scores.shape}")
    for name, t in (("layer", layer), ("head", head), ("protected", protected)):
        if t is not None and t.shape != scores.shape:
            raise ValueError(f"{name} must have the shape of scores {scores.shape}, got {t.shape}")
    if modality is not None and modality.shape != scores.shape:
        raise ValueError(f"modality must have the shape of scores {scores.shape}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; mark empty slots with -inf instead")
    if scores.numel() and not (int(layer.min()) >= 0 and int(layer.max()) < n_layers):
        raise ValueError(f"layer indices must lie in [0, {n_layers})")
    if scores.numel() and not (int(head.min()) >= 0 and int(head.max()) < n_heads):
        raise ValueError(f"head indices must lie in [0, {n_heads})")
    if modality_caps:
        if modality is None:
            raise ValueError("modality_caps needs the modality of every entry")
        for code, cap in modality_caps.items():
            if not 0 <= int(code) < 128 or cap < 0:
                raise ValueError(f"modality cap {code}: {cap} must map a code 0..127 to >= 0")
        if scores.numel() and not 0 <= int(modality.min()) <= int(modality.max()) < 128:
            raise ValueError("modality codes must lie in 0..127")


def allocate(
    scores: torch.Tensor,
    layer: torch.Tensor,
    head: torch.Tensor,
    capacity: int,
    *,
    mode: Allocation = "global",
    n_layers: int,
    n_heads: int,
    protected: torch.Tensor | None = None,
    modality: torch.Tensor | None = None,
    modality_caps: dict[int, int] | None = None,
    rank_normalize: bool = False,
    head_floor: float = 0.0,
) -> torch.Tensor:
    """Keep mask over the flat entries of one sequence, spending at most ``capacity`` entries.

    ``mode`` decides who competes: ``"global"`` ranks every entry together, ``"layer"`` gives
    each layer ``capacity // n_layers`` and ``"uniform"`` each (layer, head) an equal share; the
    remainder goes one each to the lowest layer (or row-major (layer, head)) indices. Protected
    entries are always kept and are paid from their group's share; the rest of the share goes to
    the best-scoring other entries. Entries scored ``-inf`` are empty slots and are never kept. A
    share that a group cannot fill is left unused rather than given to another group.

    ``modality_caps`` bounds how many entries of a modality code stay. Protected entries ignore
    caps but count toward them. Entries are admitted best score first across all groups: an entry
    is taken while its group has share left and its modality is under its cap. Equal scores go to
    the earlier entry. With ``rank_normalize`` each score is first replaced by its rank within its
    (layer, head) divided by that group's number of non-empty entries, so heads whose scores live
    on different scales compete on one scale.

    ``head_floor`` = r > 0 (global mode) first gives each (layer, head) an equal part
    of r × (capacity − protected entries), filled with its own best entries, which are then kept
    as protected while the rest of the capacity is allocated as ``mode`` says: in the spirit of
    DBTrimKV's floor ratio (https://github.com/ngocbh/trimkv), no head is starved.

    When ``capacity`` covers every non-empty entry and no cap is exceeded, all of them are kept,
    whatever the mode. Raises ``ValueError`` when protected entries alone overflow a share.
    """
    _check_inputs(
        scores, layer, head, capacity, mode, n_layers, n_heads, protected, modality, modality_caps
    )
    device = scores.device
    n = scores.numel()
    empty = scores == -math.inf
    present = ~empty
    kept_protected = (
        protected.to(torch.bool) & present if protected is not None else torch.zeros_like(present)
    )
    layer = layer.long()
    head_group = layer * n_heads + head.long()

    caps = {int(code): int(cap) for code, cap in (modality_caps or {}).items()}
    codes = modality.long() if caps else None
    # Cap room left once the protected entries of that modality have been counted.
    room = {m: cap - int((kept_protected & (codes == m)).sum()) for m, cap in caps.items()}

    n_present = int(present.sum())
    if capacity >= n_present and all(
        int((present & ~kept_protected & (codes == m)).sum()) <= max(r, 0) for m, r in room.items()
    ):
        return present

    if head_floor > 0 and mode == "global":
        floor = allocate(
            scores.masked_fill(kept_protected, -math.inf),
            layer,
            head,
            int(head_floor * (capacity - int(kept_protected.sum()))),
            mode="uniform",
            n_layers=n_layers,
            n_heads=n_heads,
        )
        return allocate(
            scores,
            layer,
            head,
            capacity,
            mode=mode,
            n_layers=n_layers,
            n_heads=n_heads,
            protected=kept_protected | floor,
            modality=modality,
            modality_caps=modality_caps,
            rank_normalize=rank_normalize,
        )

    group, n_groups = _groups(layer, head, mode, n_layers, n_heads)
    shares = _shares(capacity, n_groups, device)
    n_protected = torch.bincount(group[kept_protected], minlength=n_groups)
    over = n_protected > shares
    if bool(over.any()):
        g = int(over.nonzero()[0])
        where = {"global": "", "layer": f"layer {g}'s ", "uniform": _head_label(g, n_heads)}[mode]
        raise ValueError(
            f"{where}budget of {int(shares[g])} entries is smaller than the "
            f"{int(n_protected[g])} protected entries (sinks, recent window, question); "
            "raise the budget or lower sink/recent"
        )

    ranked = scores
    if rank_normalize:
        ranked = _rank_normalize(scores, head_group, n_layers * n_heads)
    if n_groups == 1 and not caps:
        left = int(shares[0] - n_protected[0])
        return kept_protected | _best(ranked, present & ~kept_protected, left)

    by_score = torch.sort(ranked, descending=True, stable=True).indices
    order = _group_order(by_score, group)
    # Position of each entry in the single best-first order that admission follows.
    global_pos = torch.empty(n, dtype=torch.long, device=device)
    global_pos[by_score] = torch.arange(n, device=device)

    s_group = group[order]
    s_pos = global_pos[order]
    candidate = (present & ~kept_protected)[order]
    left = (shares - n_protected)[s_group]
    s_codes = codes[order] if codes is not None else None

    # A capped modality stops being admitted once its cap fills: entries of it later than that
    # point in the best-first order are shut out. Each pass finds the earliest cap to fill given the
    # cutoffs known so far; entries before it are settled, so at most one pass per cap is needed.
    cutoff = torch.full((128,), n, dtype=torch.long, device=device)
    for m, r in room.items():
        if r <= 0:
            cutoff[m] = 0
    open_caps = {m: r for m, r in room.items() if r > 0}
    while True:
        eligible = candidate
        if s_codes is not None:
            eligible = candidate & (s_pos < cutoff[s_codes])
        taken = eligible & (_rank_in_group(eligible, s_group, n_groups) < left)
        earliest: tuple[int, int] | None = None
        for m, r in open_caps.items():
            pos_m = s_pos[taken & (s_codes == m)]
            if pos_m.numel() > r:
                fills_at = int(torch.kthvalue(pos_m, r).values) + 1
                if earliest is None or fills_at < earliest[1]:
                    earliest = (m, fills_at)
        if earliest is None:
            break
        cutoff[earliest[0]] = earliest[1]
        del open_caps[earliest[0]]

    keep = kept_protected.clone()
    keep[order[taken]] = True
    return keep


def _head_label(group: int, n_heads: int) -> str:
    return f"layer {group // n_heads} head {group % n_heads}'s "
