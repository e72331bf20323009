"""`RetentionConfig`: everything that decides what a run keeps, in one dataclass."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .budget import ALLOCATIONS, Budget
from .defaults import AUTO, DEFAULT_BUDGET
from .errors import ConfigError
from .policies import RetentionPolicy, build_policy

if TYPE_CHECKING:
    from .relevance import Relevance

# Where a checkpoint directory ships its tied retention gates, and the file that describes them.
SHIPPED_GATES = Path("retention_gates") / "retention_gates.json"


def best_shipped_policy(model: nn.Module) -> str:
    """``"global"`` when the model's directory ships tied retention gates, else ``"snapkv"``."""
    home = getattr(model.config, "_name_or_path", "") or ""
    record = Path(home) / SHIPPED_GATES if home else None
    if record is not None and record.is_file() and json.loads(record.read_text()).get("tied"):
        return "global"
    return "snapkv"


@dataclass(frozen=True)
class RetentionConfig:
    """How to score entries and how many to keep.

    Args:
        policy: a registered policy name (``mmretain.policies.POLICIES``), an instance, or
            ``"auto"`` (default): the learned ``global`` policy when the model's directory
            ships tied retention gates, else ``snapkv``; resolved when the config meets a
            model (`for_model`).
        budget: tokens (1024: the memory of a 1024-token full cache), a fraction of the prompt
            (0.1: of the prompt being prefilled, whole, from its first chunk on; of all the
            tokens seen once generation goes past it) or bytes ("512MiB").
        allocation: "global" (one ranking over every layer, head and position), "layer"
            (an equal share per layer) or "uniform" (an equal share per layer and head);
            default: the policy's preferred one (global for all but trimkv).
        head_floor: under global allocation, this share of the budget (what the
            protections leave of it) is first split evenly over every (layer, KV head), each
            filling its part with its own best entries; the rest is ranked as the allocation
            says. No head is starved however its scores compare (DBTrimKV's floor ratio).
        sink: first tokens protected. recent: last tokens protected. Both default to 0: each
            policy ranks every token itself (StreamingLLM's sinks are part of its score).
        protect_turn: protect the text of the latest question (the span `Session.generate`
            and `RetainedVLM` mark; a plain ``generate`` marks none, so its whole prompt is
            compressed). Protections live inside the budget and take at most half of each
            share of it, so the ranking always chooses at least half: when they do not fit,
            the recent window is lifted, then the sinks, then the question keeps only its
            last tokens, with one `BudgetWarning`.
        chunk_tokens: prefill at most this many tokens per forward, evicting after each, so
            the cache peaks at budget + chunk instead of the whole prompt.
        buffer: tokens of slack during decoding: when the cache passes the budget, eviction
            brings it that far below (at most a sixteenth of the budget), so it evicts once
            every ``buffer`` steps and never holds more than the budget. An eviction ranks the whole
            cache, so a larger buffer decodes faster and keeps a little less just after one.
        modality_caps: optional cap per modality name ("image", "video", ...) as a fraction of
            the budget.
        policy_kwargs: options for a policy given by name.
        relevance: question-to-frame relevance with open_clip (`mmretain.relevance.Relevance`):
            retrieval of the chunks a question asks about, and a prior on video entries laid
            over the policy's ranking; used by `RetainedVLM.answer_video`.
    """

    policy: str | RetentionPolicy = AUTO
    budget: int | float | str = DEFAULT_BUDGET
    allocation: str | None = None
    head_floor: float = 0.0
    sink: int = 0
    recent: int = 0
    protect_turn: bool = True
    chunk_tokens: int | None = None
    buffer: int = 128
    modality_caps: dict[str, float] | None = None
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    relevance: Relevance | None = None

    def __post_init__(self) -> None:
        # Frozen: what a run derives from the config cannot drift from its fields.
        for name in ("sink", "recent", "buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a whole number of tokens >= 0, got {value!r}")
        if not isinstance(self.protect_turn, bool):
            raise ConfigError(f"protect_turn must be True or False, got {self.protect_turn!r}")
        if self.chunk_tokens is not None and (
            isinstance(self.chunk_tokens, bool)
            or not isinstance(self.chunk_tokens, int)
            or self.chunk_tokens <= 0
        ):
            raise ConfigError(
                f"chunk_tokens must be a positive number of tokens, got {self.chunk_tokens!r}"
            )
        for modality, share in (self.modality_caps or {}).items():
            if (
                isinstance(share, bool)
                or not isinstance(share, (int, float))
                or not 0 <= share <= 1
            ):
                raise ConfigError(
                    f"modality_caps[{modality!r}] must be a fraction of the budget in [0, 1], "
                    f"got {share!r}"
                )
        if (
            isinstance(self.head_floor, bool)
            or not isinstance(self.head_floor, (int, float))
            or not 0 <= self.head_floor < 1
        ):
            raise ConfigError(
                f"head_floor must be a share of the budget in [0, 1), got {self.head_floor!r}"
            )
        if self.allocation is not None and self.allocation not in ALLOCATIONS:
            raise ConfigError(
                f"unknown allocation {self.allocation!r}; choose one of {', '.join(ALLOCATIONS)}"
            )
        try:
            budget = Budget.parse(self.budget)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if budget.kind == "tokens" and budget.value // 2 < self.sink + self.recent:
            raise ConfigError(
                f"the {self.sink + self.recent} protected tokens (sink={self.sink} + "
                f"recent={self.recent}) need more than half of the budget of "
                f"{int(budget.value)} tokens; protections take at most half, the ranking the "
                "rest: raise the budget or lower sink/recent"
            )
        policy = None
        if self.policy != AUTO:
            policy = build_policy(self.policy, **self.policy_kwargs)
        if self.relevance is not None:
            from .relevance import Relevance, RelevancePrior

            if not isinstance(self.relevance, Relevance):
                raise ConfigError(
                    f"relevance must be a mmretain.relevance.Relevance, got {self.relevance!r}"
                )
            if policy is not None and self.relevance.prior:
                policy = RelevancePrior(policy, self.relevance.prior)
        # Derived once: the config is frozen, and the engine reads the budget at every step.
        object.__setattr__(self, "retention_policy", policy)
        object.__setattr__(self, "parsed_budget", budget)

    @property
    def allocation_mode(self) -> str:
        """The allocation asked for, or the policy's preferred one."""
        return self.allocation_for(self.retention_policy)

    def allocation_for(self, policy: RetentionPolicy | None) -> str:
        """The allocation asked for, or ``policy``'s preferred one (a run's bound instance may
        prefer what its gates name)."""
        if self.allocation is not None:
            return self.allocation
        return policy.preferred_allocation if policy else "global"

    def for_model(self, model: nn.Module) -> RetentionConfig:
        """This config with ``policy="auto"`` resolved for ``model`` (see `best_shipped_policy`)."""
        if self.policy != AUTO:
            return self
        return dataclasses.replace(self, policy=best_shipped_policy(model))
