"""Policies scored by learned retention gates: entry i scores log β_i · (t − i), t the position
of the next query.

The gate rates each entry once, when it is created; its score then decays linearly in log space
with its age. Both policies take ``gates``: a `RetentionGates`, a directory written by
`RetentionGates.save_pretrained`, or None to load the gates shipped next to the model (the
``retention_gates/`` folder, or ``retention_gates_untied/`` for ``trimkv``, inside the model's
directory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..errors import GatesMismatchError, GatesNotFoundError
from ..gates import RetentionGates
from .base import LayerView, RetentionPolicy, register


@dataclass
class GatedRetention(RetentionPolicy):
    """Score log β_i · (t − i), with log β from the layer's gate and t the next query's position
    (plus the gates' ``distance_offset``)."""

    # Every score is a log survival probability, one quantity on one scale for every head.
    comparable = True
    gates: RetentionGates | str | Path | None = field(default=None, repr=False)
    shipped_folder: ClassVar[str] = ""
    needs_tied: ClassVar[bool] = False
    _gates: RetentionGates | None = field(default=None, init=False, repr=False)

    def bind(self, model: nn.Module) -> None:
        gates = self.gates
        if isinstance(gates, RetentionGates):
            gates.check_fits(model)
        else:
            directory = Path(gates) if gates is not None else self._shipped_gates(model)
            gates = RetentionGates.from_pretrained(directory, model=model)
        if self.needs_tied and not gates.config.tied:
            raise GatesMismatchError(
                f"policy {self.name!r} ranks all layers together, which needs tied gates (one "
                "readout shared by every layer); these gates are untied: use policy 'trimkv' "
                "with allocation='uniform', or train tied gates with `mmretain train-gates --tied`"
            )
        self._gates = gates.to(next(model.parameters()).device).eval()
        if gates.config.allocation is not None:
            # Chosen for these gates on held-out samples; a config's own allocation still wins.
            self.preferred_allocation = gates.config.allocation

    def _shipped_gates(self, model: nn.Module) -> Path:
        home = getattr(model.config, "_name_or_path", "") or ""
        untied = "" if self.needs_tied else " --untied"
        fix = (
            f"train them with `mmretain train-gates --model M --data D --budget B --steps N "
            f"--out M/{self.shipped_folder}{untied}` or pass policy_kwargs={{'gates': DIR}}"
        )
        if not home or not Path(home).is_dir():
            raise GatesNotFoundError(
                f"policy {self.name!r} needs retention gates and the model was not loaded from a "
                f"local directory that could ship them (config._name_or_path={home!r}); {fix}"
            )
        directory = Path(home) / self.shipped_folder
        if not directory.is_dir():
            raise GatesNotFoundError(
                f"policy {self.name!r} needs retention gates and {directory} does not exist; {fix}"
            )
        return directory

    def init_state(
        self, layer: int, hidden: torch.Tensor | None, keys: torch.Tensor
    ) -> torch.Tensor:
        if hidden is None:
            raise ValueError(f"policy {self.name!r} needs the layer's gate input hidden states")
        with torch.no_grad():
            return self._gates.log_retention(layer, hidden)

    def score(self, view: LayerView) -> list[torch.Tensor]:
        # What an entry is worth to the queries still to come, the next one at position
        # ``tokens_seen``: an entry its gate forgets at once is worth nothing to them, however new.
        # Gates record how the code that trained them counted an entry's age.
        offset = self._gates.config.distance_offset if self._gates is not None else 0
        upcoming = view.tokens_seen + offset
        return [
            log_beta * (upcoming - positions).clamp_min(1).to(log_beta.dtype)
            for log_beta, positions in zip(view.state, view.positions, strict=True)
        ]


@register
@dataclass
class TrimKV(GatedRetention):
    """Per-(layer, head) retention gates, ranked within each head.

    Bui et al., "Cache What Lasts: Token Retention for Memory-Bounded KV Cache in LLMs",
    https://arxiv.org/abs/2512.03324. Untied gates score each head on its own scale, so use
    ``allocation="uniform"`` (each layer and head keeps an equal share), as in the paper; that is
    the default when `RetentionConfig.allocation` is not given. Shipped gates are read from
    ``retention_gates_untied/``; tied gates are accepted too.
    """

    name = "trimkv"
    preferred_allocation = "uniform"
    shipped_folder = "retention_gates_untied"


@register
@dataclass
class GlobalRetention(GatedRetention):
    """Tied retention gates: every layer, head and modality competes in one ranking.

    Bui et al., "Make Each Token Count: Towards Improving Long-Context Performance with KV Cache
    Eviction", https://arxiv.org/abs/2605.09649. The readout shared by all layers puts their
    scores on one scale, which is what ``allocation="global"`` (one top-k over every entry, the
    default) needs. Shipped gates are read from ``retention_gates/``; untied gates are refused.
    """

    name = "global"
    shipped_folder = "retention_gates"
    needs_tied = True
