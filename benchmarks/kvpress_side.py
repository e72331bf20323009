"""SnapKV in mmretain beside SnapKV in kvpress: the same model, prompts and settings.

    python benchmarks/kvpress_side.py --kvpress-python PATH [--lengths 2048,8192,16384]

kvpress pins an older transformers, so it runs in its own environment, for example::

    python -m venv --system-site-packages /tmp/kvpress-venv   # reuses this machine's torch
    /tmp/kvpress-venv/bin/pip install kvpress

and this script calls that interpreter (``--kvpress-python``) on itself in ``--kvpress-worker``
mode. Both sides load one tiny random-weight Llama written with ``save_pretrained`` (2 layers,
4 heads, 2 KV heads, head_dim 64) and prefill the same seeded random prompts, then decode one
fixed token. kvpress: ``SnapKVPress(compression_ratio=0.75, window_size=64, kernel_size=5)``.
mmretain: ``snapkv`` with window 64 and kernel 5 at a budget of 0.25 of the prompt, uniform
allocation (an equal share per layer and head, as kvpress prunes), the last 64 tokens protected
(kvpress never prunes its window). Per length it prints the overlap of the kept sets (Jaccard,
worst layer and head), the largest difference of the decoded token's logits, and the prefill
(plus compression) time of each, as medians of ``--repeats`` runs: mmretain's interleaved with the
stock model's prefill, kvpress's in its own process right after. Seven by default: with three,
the 8K ratio swung from 0.70 to 1.44 between two runs on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from child import run_json

MODEL = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 20000,
}
WINDOW, KERNEL, KEEP = 64, 5, 0.25
NEXT_TOKEN = 7  # the token both sides decode after the prompt


def prompt(length: int):
    import torch

    return torch.randint(
        0, MODEL["vocab_size"], (1, length), generator=torch.Generator().manual_seed(length)
    )


def write_model(directory: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**MODEL, tie_word_embeddings=False)).save_pretrained(directory)
    return directory


def kept_positions(kept_keys, all_keys) -> list[list[list[int]]]:
    """Per layer and KV head, the original positions of the kept keys [1, H, k, d], found by
    matching them against every position's key [1, H, N, d] (post-RoPE keys are distinct)."""
    import torch

    out = []
    for kept, every in zip(kept_keys, all_keys, strict=True):
        heads = []
        for h in range(kept.shape[1]):
            distance = torch.cdist(kept[0, h].float(), every[0, h].float())
            heads.append(sorted(distance.argmin(dim=1).tolist()))
        out.append(heads)
    return out


def worker(args: argparse.Namespace) -> None:
    """kvpress side, run by kvpress's interpreter: one JSON line per length."""
    import torch
    from kvpress import SnapKVPress
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
    press = SnapKVPress(compression_ratio=1 - KEEP, window_size=WINDOW, kernel_size=KERNEL)
    length = args.kvpress_worker
    ids = prompt(length)
    with torch.inference_mode():
        full = DynamicCache()
        model(input_ids=ids, past_key_values=full)
        times = []
        for _ in range(args.repeats):
            cache = DynamicCache()
            start = time.perf_counter()
            with press(model):
                model(input_ids=ids, past_key_values=cache)
            times.append(time.perf_counter() - start)
        kept = kept_positions(
            [layer.keys for layer in cache.layers], [layer.keys for layer in full.layers]
        )
        # The cache is shorter than the prompt now: give the next token its true position, as
        # mmretain does (kvpress's cache would otherwise place it at the kept length).
        logits = model(
            input_ids=torch.tensor([[NEXT_TOKEN]]),
            position_ids=torch.tensor([[length]]),
            past_key_values=cache,
        ).logits[0, -1]
    print(json.dumps({"seconds": times, "kept": kept, "logits": logits.tolist()}))


def mmretain_side(model_dir: Path, length: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    import mmretain
    from mmretain.compat import cache_kwargs

    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    config = mmretain.RetentionConfig(
        policy="snapkv",
        policy_kwargs={"window": WINDOW, "kernel": KERNEL},
        budget=KEEP,
        allocation="uniform",
        recent=WINDOW,
    )
    ids = prompt(length)
    times, stock = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            stock.append(time.perf_counter() - start)
            with mmretain.retain(model, config) as run:
                cache = run.new_cache()
                start = time.perf_counter()
                model(input_ids=ids, **cache_kwargs(cache), logits_to_keep=1)
                times.append(time.perf_counter() - start)
                # Read before decoding: a decode step past the budget evicts again, down to the
                # budget less the decode buffer, where kvpress never evicts after the prefill.
                kept = [[sorted(p[0].tolist()) for p in layer.positions] for layer in cache.layers]
                logits = model(input_ids=torch.tensor([[NEXT_TOKEN]]), **cache_kwargs(cache))
    return {"seconds": times, "stock": stock, "kept": kept, "logits": logits.logits[0, -1].tolist()}


def jaccard(a: list[int], b: list[int]) -> float:
    return len(set(a) & set(b)) / len(set(a) | set(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kvpress-python", help="the interpreter of an environment with kvpress")
    parser.add_argument("--lengths", default="2048,8192,16384")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kvpress-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kvpress_worker:
        worker(args)
        return
    if not args.kvpress_python:
        parser.error("give --kvpress-python: the docstring says how to make kvpress's environment")
    import torch
    import transformers

    print(
        f"Command: `python benchmarks/kvpress_side.py --lengths {args.lengths} --repeats "
        f"{args.repeats}` | {time.strftime('%Y-%m-%d')} | torch {torch.__version__}, "
        f"transformers {transformers.__version__} (kvpress side: its own pinned transformers) | "
        f"{torch.get_num_threads()} torch threads"
    )
    print()
    print(
        "| N | kept-set Jaccard (min over layers, heads) | max logits diff | mmretain s | "
        "kvpress s | mmretain / kvpress | mmretain / stock prefill |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model(Path(tmp) / "llama")
        for length in (int(x) for x in args.lengths.split(",")):
            ours = mmretain_side(model_dir, length, args.repeats)
            theirs = run_json(
                [
                    args.kvpress_python,
                    __file__,
                    "--model-dir",
                    str(model_dir),
                    "--kvpress-worker",
                    str(length),
                    "--repeats",
                    str(args.repeats),
                ]
            )
            overlap = min(
                jaccard(a, b)
                for la, lb in zip(ours["kept"], theirs["kept"], strict=True)
                for a, b in zip(la, lb, strict=True)
            )
            diff = max(abs(x - y) for x, y in zip(ours["logits"], theirs["logits"], strict=True))
            ours_s, theirs_s = (
                statistics.median(ours["seconds"]),
                statistics.median(theirs["seconds"]),
            )
            stock_s = statistics.median(ours["stock"])
            print(
                f"| {length:,} | {overlap:.4f} | {diff:.2e} | {ours_s:.3f} | {theirs_s:.3f} | "
                f"{ours_s / theirs_s:.2f}x | {ours_s / stock_s:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
