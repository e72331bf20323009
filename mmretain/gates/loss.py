"""The gates' training objective: stay close to the full model while forgetting enough.

Loss = (KL(teacher ‖ student) + next-token CE) / 2 + λ · L_cap with λ = 1, averaged over the
target tokens. The teacher is the frozen model with its own attention; the student is the same
model under soft retention (TRIM-KV, https://arxiv.org/abs/2512.03324).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .capacity import capacity_loss
from .data import TARGET_MASK
from .retention_gates import RetentionGates
from .soft_retention import soft_retention

CAPACITY_WEIGHT = 1.0


@dataclass
class LossTerms:
    """The three terms of one batch's loss; ``total`` is what is minimised."""

    kl: torch.Tensor
    ce: torch.Tensor
    capacity: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return (self.kl + self.ce) / 2 + CAPACITY_WEIGHT * self.capacity


def distillation_loss(
    model: nn.Module,
    gates: RetentionGates,
    batch: dict[str, torch.Tensor],
    *,
    budget: int,
    global_capacity: bool,
) -> LossTerms:
    """Loss of ``gates`` on one batch; gradients reach the gates only if the model is frozen.

    ``budget`` is the per-head capacity M; ``global_capacity`` sums the expected live entries
    over all layers and heads (tied gates) instead of bounding each head (untied).
    """
    inputs = {name: value for name, value in batch.items() if name != TARGET_MASK}
    # Token t + 1 is predicted at position t; the loss counts the positions whose next token
    # is a target.
    predicting = batch[TARGET_MASK][:, 1:].bool()
    if not bool(predicting.any()):
        raise ValueError("a training batch has no target tokens after its first position")
    with torch.no_grad():
        teacher = model(**inputs, use_cache=False).logits[:, :-1][predicting]
    with soft_retention(model, gates) as log_betas:
        student = model(**inputs, use_cache=False).logits[:, :-1][predicting]
    teacher_log_probs = F.log_softmax(teacher.float(), dim=-1)
    student_log_probs = F.log_softmax(student.float(), dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
    ce = F.nll_loss(student_log_probs, inputs["input_ids"][:, 1:][predicting])
    log_beta = torch.stack([log_betas[layer] for layer in sorted(log_betas)], dim=1)
    capacity = capacity_loss(
        log_beta, budget, inputs.get("attention_mask"), global_capacity=global_capacity
    )
    return LossTerms(kl=kl, ce=ce, capacity=capacity)
