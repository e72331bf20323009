"""The grid of a run: the settings every cell shares, and the (policy, budget) cells.

A cell is named ``POLICY@BUDGET`` (``snapkv@0.1``, ``h2o@512``, ``tova@64MiB``); the full cache
is one cell, ``full``, whatever the budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..budget import Budget
from ..config import RetentionConfig
from .sample import MediaSettings

FULL = "full"


@dataclass(frozen=True)
class RunSettings:
    """Everything a run's rows depend on besides their cell; a rerun must use the same."""

    model: str
    fps: float | None = 1.0
    max_frames: int | None = None
    chunk_frames: int = 16
    max_new_tokens: int | None = None  # None: each task's own
    allocation: str | None = None
    sink: int = 0
    recent: int = 0
    # Prefill at most this many tokens per forward, evicting after each: the answer then comes
    # from what the budget kept, not from a prefill that saw everything.
    chunk_tokens: int | None = None
    dtype: str | None = None
    # What a fraction budget is taken of. Recorded so that rows made when it meant the tokens
    # seen so far (folders without this field) are not resumed into a run where it means the
    # whole prompt.
    fraction_of: str = "prompt"
    # How the budget binds. "ceiling, protections in half": protections live inside it and take
    # at most half of each share, and decoding never passes it; folders made under an earlier
    # rule are not resumed into such a run.
    budget_rule: str = "ceiling, protections in half"
    # What stands for the assistant's earlier turns of a conversation: the model's own replies,
    # so the cache carries over turn to turn (folders made with the recorded replies, which
    # restarted the conversation, are not resumed).
    earlier_replies: str = "the model's"

    @property
    def media(self) -> MediaSettings:
        return MediaSettings(self.fps, self.max_frames)


@dataclass(frozen=True)
class Cell:
    """One policy at one budget (the full cache has no budget)."""

    policy: str
    budget: str | None = None

    @property
    def name(self) -> str:
        return FULL if self.policy == FULL else f"{self.policy}@{self.budget}"

    @classmethod
    def from_name(cls, name: str) -> Cell:
        policy, _, budget = name.partition("@")
        return cls(policy, budget or None)

    def config(self, settings: RunSettings) -> RetentionConfig:
        return RetentionConfig(
            policy=self.policy,
            budget=1.0 if self.budget is None else self.budget,
            allocation=settings.allocation,
            sink=settings.sink,
            recent=settings.recent,
            chunk_tokens=settings.chunk_tokens,
        )


def _label(budget: str) -> str:
    """One spelling per budget, so "0.10" and "0.1" are the same cell."""
    parsed = Budget.parse(budget)
    if parsed.kind == "fraction":
        return f"{parsed.value:g}"
    return str(int(parsed.value)) if parsed.kind == "tokens" else budget.strip()


def cells(policies: list[str], budgets: list[str], settings: RunSettings) -> list[Cell]:
    """The full cache once, every other policy at every budget; checked before any work."""
    if not policies:
        raise ValueError("give at least one policy, e.g. --policies full,snapkv")
    if not budgets and any(policy != FULL for policy in policies):
        raise ValueError("give at least one budget for the policies that evict, e.g. --budgets 0.1")
    labels = list(dict.fromkeys(_label(b) for b in budgets))
    grid = [
        Cell(policy, budget)
        for policy in dict.fromkeys(policies)
        for budget in ([None] if policy == FULL else labels)
    ]
    for cell in grid:
        cell.config(settings)  # an unknown policy or a bad budget fails here, not mid-run
    return grid
