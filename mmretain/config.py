"""`RetentionConfig`: everything that decides what a run keeps, in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .budget import ALLOCATIONS, Budget
from .policies import RetentionPolicy, build_policy


@dataclass
class RetentionConfig:
    """How to score entries and how many to keep.

    Args:
        policy: a registered policy name (``mmretain.policies.POLICIES``) or an instance.
        budget: tokens (1024: the memory of a 1024-token full cache), a fraction of the prompt
            (0.1: of the prompt being prefilled, whole, from its first chunk on; of all the
            tokens seen once generation goes past it) or bytes ("512MiB").
        allocation: "global" (one ranking over every layer, head and position), "layer"
            (an equal share per layer) or "uniform" (an equal share per layer and head);
            default: the policy's preferred one (global for all but trimkv).
        sink: first tokens never evicted. recent: last tokens never evicted.
        protect_turn: never evict the text of the latest prompt (the current user turn).
        chunk_tokens: prefill at most this many tokens per forward, evicting after each, so
            the cache peaks at budget + chunk instead of the whole prompt.
        buffer: tokens of slack during decoding; eviction runs when the cache exceeds
            budget + buffer and brings it back to the budget.
        modality_caps: optional cap per modality name ("image", "video", ...) as a fraction of
            the budget.
        policy_kwargs: options for a policy given by name.
    """

    policy: str | RetentionPolicy = "snapkv"
    budget: int | float | str = 1024
    allocation: str | None = None
    sink: int = 4
    recent: int = 32
    protect_turn: bool = True
    chunk_tokens: int | None = None
    buffer: int = 16
    modality_caps: dict[str, float] | None = None
    policy_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.retention_policy = build_policy(self.policy, **self.policy_kwargs)
        if self.allocation is None:
            self.allocation = self.retention_policy.preferred_allocation
        if self.allocation not in ALLOCATIONS:
            raise ValueError(
                f"unknown allocation {self.allocation!r}; choose one of {', '.join(ALLOCATIONS)}"
            )
        for name in ("sink", "recent", "buffer"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.chunk_tokens is not None and self.chunk_tokens <= 0:
            raise ValueError(
                f"chunk_tokens must be a positive number of tokens, got {self.chunk_tokens}"
            )
        self.parsed_budget = Budget.parse(self.budget)
        if (
            self.parsed_budget.kind == "tokens"
            and self.parsed_budget.value < self.sink + self.recent
        ):
            raise ValueError(
                f"budget of {int(self.parsed_budget.value)} tokens is smaller than the "
                f"{self.sink + self.recent} protected tokens "
                f"(sink={self.sink} + recent={self.recent}); "
                "raise the budget or lower sink/recent"
            )
