"""Learned retention gates: the modules, their soft-retention training and save/load.

TRIM-KV (untied gates): https://arxiv.org/abs/2512.03324. "Make Each Token Count" (tied gates,
one global ranking): https://arxiv.org/abs/2605.09649.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "BatchDirectory": "data",
    "GatesConfig": "retention_gates",
    "RetentionGates": "retention_gates",
    "train_gates": "train",
}
if TYPE_CHECKING:
    from .data import BatchDirectory
    from .retention_gates import GatesConfig, RetentionGates
    from .train import train_gates

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
