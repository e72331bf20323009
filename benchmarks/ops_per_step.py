"""Torch operators dispatched per greedy decode step: mmretain against the stock model.

On a GPU a small batch decodes at the rate it can launch kernels, so the operators a step
dispatches bound its speed there, whatever a CPU's timings say. This counts them with a
``TorchDispatchMode`` (every ATen operator that reaches a kernel, views included) on a decoder
shaped like a 7B VLM's language model: 28 layers, 28 query heads over 4 KV heads (GQA 7),
tiny widths, a 2,048-token prompt, batch 1, one thread.

Rows: the stock model with transformers' ``DynamicCache``; ``retain()`` at full budget; and two
policies (SnapKV, and ``global`` with random tied gates) at two budgets. Each row prefills the
prompt in one forward call, then runs ``--steps`` greedy steps of one token, and reports the
median and the mean operators per step over those steps, evictions included (an eviction step
dispatches far more than the others: the mean carries it, the median does not), and the ratio
of each to the stock model's.

    python benchmarks/ops_per_step.py [--steps 64] [--prompt 2048]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import mmretain
from mmretain.compat import cache_kwargs
from mmretain.gates import RetentionGates

SHAPE = dict(
    vocab_size=1024,
    hidden_size=224,
    intermediate_size=448,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=8192,
)


class OperatorCount(TorchDispatchMode):
    """Counts the ATen operators dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def decode_counts(model, cache, logits: torch.Tensor, start: int, steps: int) -> list[int]:
    """Operators of each of ``steps`` greedy one-token forwards that continue ``cache``."""
    counts = []
    token = logits[:, -1].argmax(-1, keepdim=True)
    for step in range(steps):
        position = torch.tensor([[start + step]])
        with OperatorCount() as counter:
            out = model(
                input_ids=token, position_ids=position, use_cache=True, **cache_kwargs(cache)
            )
        counts.append(counter.count)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    return counts


def stock(model, ids: torch.Tensor, steps: int) -> list[int]:
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
    return decode_counts(model, cache, out.logits, ids.shape[1], steps)


def retained(model, ids: torch.Tensor, steps: int, config: mmretain.RetentionConfig) -> list[int]:
    with mmretain.retain(model, config) as run:
        cache = run.new_cache()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
        counts = decode_counts(model, cache, out.logits, ids.shape[1], steps)
        evictions = cache.evictions
    return counts, evictions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=64, help="decode steps counted per row")
    parser.add_argument("--prompt", type=int, default=2048, help="prompt tokens")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).eval()
    gates = RetentionGates.for_model(model, tied=True, width=64)
    ids = torch.randint(3, SHAPE["vocab_size"], (1, args.prompt))
    rows = []
    with torch.no_grad():
        base = stock(model, ids, args.steps)
        rows.append(("stock, DynamicCache", "-", base, 0))
        cells = [("full", 1.0)] + [(p, b) for p in ("snapkv", "global") for b in (0.1, 0.25)]
        for policy, budget in cells:
            config = mmretain.RetentionConfig(
                policy=policy,
                budget=budget,
                policy_kwargs={"gates": gates} if policy == "global" else {},
            )
            counts, evictions = retained(model, ids, args.steps, config)
            rows.append((f"retain(), {policy}", f"{budget:g}", counts, evictions))
    base_median, base_mean = statistics.median(base), statistics.fmean(base)
    print(
        f"{SHAPE['num_hidden_layers']} layers, {SHAPE['num_attention_heads']} query heads over "
        f"{SHAPE['num_key_value_heads']} KV heads, {args.prompt}-token prompt, {args.steps} "
        "greedy steps, batch 1, one thread\n"
    )
    print(
        "| run | budget | median ops/step | × stock | mean ops/step | × stock | max | evictions |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, budget, counts, evictions in rows:
        median, mean = statistics.median(counts), statistics.fmean(counts)
        print(
            f"| {name} | {budget} | {median:,.0f} | {median / base_median:.2f} | {mean:,.0f} | "
            f"{mean / base_mean:.2f} | {max(counts):,} | {evictions} |"
        )


if __name__ == "__main__":
    main()
