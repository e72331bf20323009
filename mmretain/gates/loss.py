"""The gates' training objective: stay close to the full model while forgetting enough.

Loss = (KL(teacher ‖ student) + next-token CE) / 2 + λ · L_cap with λ = 1, averaged over the
target tokens. The teacher is the frozen model with its own attention; the student is the same
model under soft retention (TRIM-KV, https://arxiv.org/abs/2512.03324).

One batch runs the model once as the teacher, without gradients, recording what its text decoder
is called with (embeddings with the media already encoded, positions, mask); the student reruns
only the decoder on that record. So the vision tower runs once per batch, and the vocabulary
projection runs only at the positions the loss counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..adapters import adapter_for
from ..errors import GatesTrainingError
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
    floor: float = 0.0,
    attention: str = "fused",
    checkpointing: bool = False,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> LossTerms:
    """Loss of ``gates`` on one batch; gradients reach the gates only if the model is frozen.

    ``budget`` is the per-head capacity M; ``global_capacity`` sums the expected live entries
    over all layers and heads (tied gates) instead of bounding each head (untied); ``floor``
    asks every head to keep at least that share of M (`capacity_loss`). ``attention`` is the
    soft-retention path (`soft_retention`); ``checkpointing`` recomputes each decoder layer in
    the backward pass instead of keeping its activations, which needs the backward pass to run
    here: ``backward`` (e.g. ``Tensor.backward``) is called on the total inside.
    """
    inputs = {name: value for name, value in batch.items() if name != TARGET_MASK}
    # Token t + 1 is predicted at position t; the loss counts the positions whose next token
    # is a target.
    predicting = batch[TARGET_MASK][:, 1:].bool()
    if not bool(predicting.any()):
        raise GatesTrainingError(
            "a training batch has no target tokens after its first position; mark the answer "
            "tokens with 1 in its target_mask"
        )
    decoder = adapter_for(model).decoder
    head = model.get_output_embeddings()
    with torch.no_grad(), recorded_call(decoder) as call:
        # logits_to_keep=1: the full-vocabulary logits of every position are never needed.
        model(**inputs, use_cache=False, logits_to_keep=1)
        teacher = head(call.output[:, :-1][predicting])
    with (
        soft_retention(model, gates, attention=attention) as log_betas,
        checkpointed(decoder.layers if checkpointing else ()),
    ):
        hidden = decoder(*call.args, **call.kwargs)[0]
        student = head(hidden[:, :-1][predicting])
        teacher_log_probs = F.log_softmax(teacher.float(), dim=-1)
        student_log_probs = F.log_softmax(student.float(), dim=-1)
        kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
        ce = F.nll_loss(student_log_probs, inputs["input_ids"][:, 1:][predicting])
        log_beta = torch.stack([log_betas[layer] for layer in sorted(log_betas)], dim=1)
        capacity = capacity_loss(
            log_beta,
            budget,
            inputs.get("attention_mask"),
            global_capacity=global_capacity,
            floor=floor,
        )
        terms = LossTerms(kl=kl, ce=ce, capacity=capacity)
        if backward is not None:
            # Inside the block: a checkpointed layer is recomputed under soft retention.
            backward(terms.total)
    return terms


@dataclass
class RecordedCall:
    """The arguments a module was called with and the first item of its output."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    output: torch.Tensor | None = None


@contextmanager
def recorded_call(module: nn.Module) -> Iterator[RecordedCall]:
    """Record ``module``'s (last) call inside the block, to replay it on the same inputs."""
    call = RecordedCall()

    def record(module, args, kwargs, output):
        call.args, call.kwargs, call.output = args, dict(kwargs), output[0]

    handle = module.register_forward_hook(record, with_kwargs=True)
    try:
        yield call
    finally:
        handle.remove()


@contextmanager
def checkpointed(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Each of ``layers`` recomputed in the backward pass instead of storing its activations.

    The model's own switch (``gradient_checkpointing_enable``) acts only in training mode,
    which would also turn on dropout in a model that is meant to be frozen. Non-reentrant
    checkpointing, because the gates' log β leaves each layer by a side path (the capacity loss).
    """
    for layer in layers:
        layer.forward = partial(checkpoint, layer.forward, use_reentrant=False)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the class's forward again
