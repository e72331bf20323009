"""What fixes a test-bed training run: the suites' mix, batch sizes, ladders and schedule.

Its own module, so that the gates' training data (`batching`) reads the mix without importing
the training loop that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """Everything that fixes a training run; the same config always gives the same weights."""

    arch: str = "qwen2vl"
    size: str = "default"
    seed: int = 0
    steps: int = 3000
    lr: float = 5e-4
    warmup: int = 100
    # How often each suite is drawn, and its batch size (images cost the most per sample).
    # Suites join in this order, each once the one before has mastered its first length: a
    # mix of every task from the start sat at chance for thousands of steps.
    mix: dict[str, float] = field(
        default_factory=lambda: {
            "video-needle": 0.25,
            "image-needle": 0.3,
            "dialogue": 0.2,
        }
    )
    batch: dict[str, int] = field(
        default_factory=lambda: {
            "image-needle": 8,
            "video-needle": 16,
            "dialogue": 16,
        }
    )
    # The lengths (cells, frames) each suite climbs, ending at its training length. Finding one
    # token among a few is learnt fast; among hundreds, only once the features are learnt.
    ladders: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {
            "image-needle": (4, 8, 16),
            "video-needle": (2, 4, 8, 16, 32),
            "dialogue": (3,),
        }
    )
    mastery: float = 0.9  # training-batch accuracy that moves a suite up its ladder
    window: int = 8  # batches that accuracy is averaged over
    eval_every: int = 250
    eval_samples: int = 16  # held-out samples per suite and question at each evaluation
