"""Capacity loss: how far the expected number of live entries overshoots the budget.

S_t = Σ_{i≤t} β_i^(t−i) is the number of entries one head would still hold at step t if every
entry i survived with probability β_i^(t−i) (TRIM-KV, https://arxiv.org/abs/2512.03324).
"""

from __future__ import annotations

import torch

from ..errors import GatesTrainingError

# Elements of one [rows, steps, keys] block of decay terms: bounds the memory of the sum.
BLOCK_ELEMENTS = 1 << 22


def _decay_terms(
    log_beta: torch.Tensor, keep: torch.Tensor, start: int, stop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """β_i^(t−i) for t in [start, stop) and i < stop: [rows, stop − start, stop], plus t − i."""
    steps = torch.arange(start, stop, device=log_beta.device)
    distance = (steps[:, None] - torch.arange(stop, device=log_beta.device)[None, :]).to(
        log_beta.dtype
    )
    # log β ≤ 0 and t − i ≥ 0 where it counts, so every exponent is ≤ 0: no overflow, and
    # future keys (t < i) get exponent −inf, i.e. exactly zero.
    exponent = log_beta[:, None, :stop] * distance.clamp_min(0)
    exponent = exponent.masked_fill((distance < 0) | ~keep[:, None, :stop], float("-inf"))
    return exponent.exp(), distance


class _ExpectedLive(torch.autograd.Function):
    """S_t row by row, in blocks of steps; the backward pass recomputes each block.

    Each entry decays at its own rate, so there is no scalar recurrence S_t = β·S_{t−1} + 1
    (that needs one β shared by all entries) and the exact sum costs O(T²) work. What can be
    bounded is memory: forward and backward both walk blocks of steps, so at most
    ``BLOCK_ELEMENTS`` decay terms exist at once and no T × T matrix is ever held or saved.
    """

    @staticmethod
    def forward(ctx, log_beta: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(log_beta, keep)
        live = torch.zeros_like(log_beta)
        for start, stop in _blocks(*log_beta.shape):
            terms, _ = _decay_terms(log_beta, keep, start, stop)
            live[:, start:stop] = terms.sum(dim=-1)
        return live

    @staticmethod
    def backward(ctx, grad_live: torch.Tensor):
        log_beta, keep = ctx.saved_tensors
        grad = torch.zeros_like(log_beta)
        for start, stop in _blocks(*log_beta.shape):
            terms, distance = _decay_terms(log_beta, keep, start, stop)
            # d/d log β_i of β_i^(t−i) = (t − i) · β_i^(t−i)
            weighted = grad_live[:, start:stop, None] * terms * distance.clamp_min(0)
            grad[:, :stop] += weighted.sum(dim=1)
        return grad, None


def _blocks(rows: int, steps: int) -> list[tuple[int, int]]:
    size = max(1, BLOCK_ELEMENTS // max(1, rows * steps))
    return [(start, min(steps, start + size)) for start in range(0, steps, size)]


def expected_live_entries(
    log_beta: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """S_t = Σ_{i≤t, valid i} exp(log β_i · (t − i)) along the last dim of log β [..., T].

    ``valid`` (bool, broadcastable to log β) leaves padding out of the sum. Differentiable.
    """
    keep = torch.ones_like(log_beta, dtype=torch.bool) if valid is None else valid.bool()
    keep = keep.expand_as(log_beta).reshape(-1, log_beta.shape[-1])
    live = _ExpectedLive.apply(log_beta.reshape(-1, log_beta.shape[-1]), keep)
    return live.reshape(log_beta.shape)


def capacity_loss(
    log_beta: torch.Tensor,
    budget: int,
    valid: torch.Tensor | None = None,
    *,
    global_capacity: bool,
    floor: float = 0.0,
) -> torch.Tensor:
    """Mean over its non-zero terms of max(0, (S_t − M) / max(n_t − M, 1)), plus the floor's.

    ``log_beta`` is [b, layers, kv_heads, T]; ``valid`` [b, T] marks real tokens; n_t counts the
    tokens seen up to and including t, so each term is the share of the overflow the gates have
    not forgotten yet (at most 1). Per head (TRIM-KV), M is the per-head ``budget``. Globally
    ("Make Each Token Count", https://arxiv.org/abs/2605.09649) S_t is summed over every layer and
    head and M, n_t are scaled by layers × kv_heads, so heads may trade capacity among themselves.

    A global bound alone lets training spend nearly all of it on one head. ``floor`` = r > 0
    adds, in the spirit of DBTrimKV's floor ratio, the mean of the non-zero shortfalls
    max(0, (rM − S_t) / rM) of every head, counted from the step where n_t ≥ rM: every head is
    asked to keep at least r·M entries, and the rest of the budget stays global.
    """
    if not 0.0 <= floor < 1.0:
        raise GatesTrainingError(
            f"the per-head floor is a share of the budget in [0, 1), got {floor}; "
            "0 turns it off, 0.5 keeps half of every head's budget to itself"
        )
    b, n_layers, n_heads, steps = log_beta.shape
    if valid is None:
        valid = torch.ones(b, steps, dtype=torch.bool, device=log_beta.device)
    valid = valid.bool()
    per_head = expected_live_entries(log_beta, valid[:, None, None, :])
    seen = valid.cumsum(dim=-1).to(log_beta.dtype)
    if global_capacity:
        scale = n_layers * n_heads
        live, total, capacity, counted = (
            per_head.sum(dim=(1, 2)),
            seen * scale,
            budget * scale,
            valid,
        )
    else:
        live, total, capacity = per_head, seen[:, None, None, :], budget
        counted = valid[:, None, None, :].expand_as(live)
    overflow = torch.relu((live - capacity) / (total - capacity).clamp_min(1)) * counted
    loss = _mean_of_nonzero(overflow)
    if floor > 0:
        least = floor * budget
        reachable = valid & (seen >= least)
        shortfall = torch.relu((least - per_head) / least) * reachable[:, None, None, :]
        loss = loss + _mean_of_nonzero(shortfall)
    return loss


def _mean_of_nonzero(terms: torch.Tensor) -> torch.Tensor:
    return terms.sum() / (terms > 0).sum().clamp_min(1)
