"""Learned retention gates: the modules, their soft-retention training and save/load.

TRIM-KV (untied gates): https://arxiv.org/abs/2512.03324. "Make Each Token Count" (tied gates,
one global ranking): https://arxiv.org/abs/2605.09649.
"""

from .data import BatchDirectory
from .retention_gates import GatesConfig, RetentionGates
from .train import train_gates

__all__ = ["BatchDirectory", "GatesConfig", "RetentionGates", "train_gates"]
