"""`train_gates`: fit retention gates to a frozen model by distillation under a capacity loss.

TRIM-KV (untied gates, per-head capacity): https://arxiv.org/abs/2512.03324.
"Make Each Token Count" (tied gates, one global capacity): https://arxiv.org/abs/2605.09649.

`accelerate` places the model and gates on the device of the run, shards the batches between
processes and averages the gates' gradients, so the same loop runs on a CPU or on many GPUs
(``accelerate launch -m mmretain.gates ...``). One optimizer step of P processes with
``accumulate`` = A takes P·A batches and equals one process with A = P·A on the same batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from ..errors import GatesTrainingError
from .checkpoint import latest_checkpoint, load_checkpoint, load_gates, save_checkpoint
from .data import batch_stream
from .loss import LossTerms, distillation_loss
from .retention_gates import GatesConfig, RetentionGates

# The gates start saturated (sigmoid'(18) ≈ 1.5e-8), so their first gradients are tiny; a small
# epsilon keeps Adam's normalised step from being swamped by it.
ADAM_EPS = 1e-12
SMOOTHING = 0.9  # of the running loss terms on the progress bar
# Settings a checkpoint may predate; resuming it assumes these.
SETTING_DEFAULTS = {"accumulate": 1, "floor": 0.0}


def train_gates(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    budget: int,
    tied: bool,
    steps: int,
    out: str | Path,
    lr: float = 1e-3,
    checkpoint_every: int = 100,
    resume: bool = False,
    width: int = 512,
    seed: int = 0,
    progress: bool = True,
    accumulate: int = 1,
    floor: float = 0.0,
    attention: str = "fused",
    checkpointing: bool = False,
) -> RetentionGates:
    """Train gates for ``model`` for ``steps`` optimizer steps and save them to ``out``.

    ``budget`` is the capacity M in tokens (per head; tied gates get the same memory as one
    global pool). ``tied=True`` trains the global variant, ``tied=False`` TRIM-KV's. A checkpoint
    goes to ``out/checkpoints/`` every ``checkpoint_every`` steps and at the end; with ``resume``
    training continues from the latest one (gates, optimizer, step, data position). The final
    gates are written to ``out`` with `RetentionGates.save_pretrained`.

    Each optimizer step averages the gradients of ``accumulate`` batches per process. ``floor``
    is the per-head floor of the capacity loss (`capacity_loss`); ``attention`` and
    ``checkpointing`` are those of `distillation_loss`. The model keeps its dtype (bf16 halves
    its memory); the gates train in float32.
    """
    out = check_settings(
        budget=budget,
        steps=steps,
        width=width,
        checkpoint_every=checkpoint_every,
        accumulate=accumulate,
        out=out,
    )
    accelerator = Accelerator()
    settings = {"budget": budget, "tied": tied, "accumulate": accumulate, "floor": floor}
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is None:
        config = replace(GatesConfig.for_model(model.config, tied=tied, width=width), budget=budget)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gates = RetentionGates(config)
    else:
        gates = load_gates(checkpoint, model)
    if not hasattr(model, "hf_device_map"):  # a model split over devices stays where it is
        model.to(accelerator.device)
    gates.to(accelerator.device).train()
    optimizer = torch.optim.AdamW(gates.parameters(), lr=lr, eps=ADAM_EPS, weight_decay=0.0)
    start = 0
    if checkpoint is not None:
        start, saved = load_checkpoint(checkpoint, optimizer)
        if {**SETTING_DEFAULTS, **saved} != settings:
            raise GatesTrainingError(
                f"the checkpoint in {checkpoint} was trained with {saved}, not {settings}; "
                "pass the same settings or a new output directory"
            )
    stream = batch_stream(
        batches,
        skip=start * accumulate,
        shard=(accelerator.process_index, accelerator.num_processes),
        vocab_size=model.get_input_embeddings().num_embeddings,
    )
    options = {
        "budget": budget,
        "global_capacity": tied,
        "floor": floor,
        "attention": attention,
        "checkpointing": checkpointing,
    }
    bar = tqdm(
        range(start, steps),
        initial=start,
        total=steps,
        desc="train-gates",
        disable=not (progress and accelerator.is_local_main_process),
    )
    running: dict[str, float] = {}
    with frozen(model):
        for step in bar:
            micro = [next(stream) for _ in range(accumulate)]
            terms = _step(model, gates, optimizer, accelerator, micro, options)
            _update_running(running, terms)
            bar.set_postfix({name: f"{value:.4g}" for name, value in running.items()})
            done = step + 1
            if done % checkpoint_every == 0 or done == steps:
                _checkpoint(accelerator, out, done, gates, optimizer, settings)
    if accelerator.is_main_process:
        gates.save_pretrained(out)
    accelerator.wait_for_everyone()
    return gates


def check_settings(
    *, budget: int, steps: int, width: int, checkpoint_every: int, accumulate: int, out: str | Path
) -> Path:
    """``out`` as a path, once the settings can train (`train_gates` checks them first; the
    command, before it loads a model). Steps may be 0: the initial gates."""
    counts = {
        "budget": budget,
        "width": width,
        "checkpoint_every": checkpoint_every,
        "accumulate": accumulate,
    }
    if min(counts.values()) < 1 or steps < 0:
        raise GatesTrainingError(
            "budget, width, checkpoint_every and accumulate must be >= 1 and steps >= 0; got "
            + ", ".join(f"{name}={value}" for name, value in {**counts, "steps": steps}.items())
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GatesTrainingError(
            f"the output {out} is a file; give a directory (new or holding earlier gates) to --out"
        )
    return out


def _step(
    model: nn.Module,
    gates: RetentionGates,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    batches: list[dict[str, torch.Tensor]],
    options: dict,
) -> LossTerms:
    """One optimizer step over ``batches``; returns the last batch's terms."""

    def backward(loss: torch.Tensor) -> None:
        accelerator.backward(loss / len(batches))

    for batch in batches:
        batch = {name: value.to(accelerator.device) for name, value in batch.items()}
        terms = distillation_loss(model, gates, batch, backward=backward, **options)
    # The gates run once per layer in a forward, which DDP's wrapper does not allow, so their
    # gradients are averaged between processes here instead.
    for parameter in gates.parameters():
        if parameter.grad is not None:
            parameter.grad = accelerator.reduce(parameter.grad, reduction="mean")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return terms


def _update_running(running: dict[str, float], terms: LossTerms) -> None:
    values = {
        "kl": terms.kl.item(),
        "ce": terms.ce.item(),
        "cap": terms.capacity.item(),
        "loss": terms.total.item(),
    }
    for name, value in values.items():
        previous = running.get(name, value)
        running[name] = SMOOTHING * previous + (1 - SMOOTHING) * value


def _checkpoint(
    accelerator: Accelerator,
    out: Path,
    step: int,
    gates: RetentionGates,
    optimizer: torch.optim.Optimizer,
    settings: dict,
) -> None:
    if accelerator.is_main_process:
        save_checkpoint(out, step, gates, optimizer, settings)
    accelerator.wait_for_everyone()


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with no parameter requiring grad; both restored on exit."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval().requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)
