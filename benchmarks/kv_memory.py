"""KV-cache memory and speed of mmretain policies on a tiny random-weight Llama.

For every (context length, policy, budget) the script runs one row in a fresh child process
(the script re-invoked with ``--one``), so the child's RSS high-water mark belongs to that row
alone. The child builds the same seeded random-weight ``LlamaForCausalLM`` (float32), draws a
prompt of random token ids and, inside ``mmretain.retain()``:

- prefill: one forward call on the whole prompt with ``**cache_kwargs(run.new_cache())`` and
  ``logits_to_keep=1``; mmretain splits it into ``--chunk-tokens`` chunks and evicts after each.
  The wall time of that call is "prefill s".
- decode: a manual greedy loop of ``--decode-tokens`` single-token forward calls reusing that
  cache (the first input is the argmax of the prefill logits). Timing the loop apart from the
  prefill is why ``generate`` is not used; "decode tok/s" is decode tokens / loop wall time.

A short untimed warm-up on a throwaway cache runs first. The peak RSS is read after the
prefill and the decode loop, before the stock model runs. The parent prints one markdown table
row per run on stdout, progress on stderr. The "full" policy never evicts, so it runs once per
length, without chunks, and its budget is shown as "-".

Against the stock model (``sdpa`` attention, transformers' ``DynamicCache``, no ``retain()``;
a second instance with the same weights), measured in the same process:

- "prefill vs stock": the row's prefill time over the stock model's one-call prefill of the
  same prompt (measured once per length, in the "full" row's process);
- "decode vs stock": over ``--compare-tokens`` further steps, each of the row's steps followed
  by one of the stock model's, the row's total time over the stock model's. The stock model
  decodes from a cache of as many tokens as the row's cache keeps (the same number of
  entries); the row's time includes its evictions. Alternating the steps makes a change of load
  on the machine hit both alike. Both run on ``--compare-threads`` torch threads (1 by default):
  on a 2-core machine with 2 threads, the same row's ratio swung from 0.82 to 1.29 between
  64-step windows and runs, as other processes preempted one thread of a parallel kernel and
  stalled the other; with 1 thread it stayed within 0.88-0.95.

Cache statistics are read at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from child import header, run_json, table_head

from mmretain.compat import cache_kwargs

MIB = 1024 * 1024
COLUMNS = (
    "context",
    "policy",
    "budget",
    "held / full cache",
    "held / K+V minimum",
    "peak held (MiB)",
    "prefill s",
    "decode tok/s",
    "prefill vs stock",
    "decode vs stock",
    "peak RSS (MiB)",
)
MODEL = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 70000,
}


def build_model(seed: int):
    """The benchmark model: a seeded random-weight Llama in float32, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**MODEL, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(torch.float32).eval()


def greedy_step(model, token, cache) -> tuple:
    """One single-token forward; the next token (its argmax) and the call's wall time."""
    start = time.perf_counter()
    out = model(input_ids=token, **cache_kwargs(cache), use_cache=True)
    return out.logits[:, -1].argmax(dim=-1, keepdim=True), time.perf_counter() - start


def greedy_decode(model, token, cache, steps: int) -> float:
    """``steps`` greedy single-token forward calls; their total wall time."""
    total = 0.0
    for _ in range(steps):
        token, seconds = greedy_step(model, token, cache)
        total += seconds
    return total


def prefill(model, prompt, cache) -> tuple:
    """One forward over ``prompt``: its greedy next token and the call's wall time."""
    start = time.perf_counter()
    out = model(input_ids=prompt, **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].argmax(dim=-1, keepdim=True), time.perf_counter() - start


def run_one(args: argparse.Namespace) -> dict:
    """One (length, policy, budget) measurement in this process; returns the row's numbers."""
    import torch
    from transformers import DynamicCache

    import mmretain

    length, policy, budget = args.one.split(",")
    length = int(length)
    model = build_model(args.seed)
    stock = build_model(args.seed)  # the same weights, never under retain()
    generator = torch.Generator().manual_seed(args.seed + 1)
    prompt = torch.randint(0, MODEL["vocab_size"], (1, length), generator=generator)
    config = mmretain.RetentionConfig(
        policy=policy,
        budget=budget if policy != "full" else 1024,  # "full" keeps everything whatever the budget
        allocation="global",  # sink, recent and the question's protection: the defaults
        # "full" is the overhead row: one call, like the stock prefill it is compared with.
        chunk_tokens=args.chunk_tokens if policy != "full" else None,
    )
    with torch.inference_mode(), mmretain.retain(model, config) as run:
        token, _ = prefill(model, prompt[:, :512], run.new_cache())  # warm-up
        greedy_decode(model, token, run.cache, 2)

        cache = run.new_cache()
        token, prefill_s = prefill(model, prompt, cache)
        decode_s = greedy_decode(model, token, cache, args.decode_tokens)
        # The row's peak, read before the stock model runs (ru_maxrss: KiB on Linux, bytes on
        # macOS): the prefill and the first decode steps, evictions included.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_bytes = rss if sys.platform == "darwin" else rss * 1024

        # The stock model decodes from a cache of as many tokens as the row keeps (the prompt's
        # first ones; the full row's is the whole prompt, whose prefill is timed too). Its steps
        # alternate with the row's, so a change of load on the machine hits both alike.
        kept = prompt[:, : int(cache.stats.tokens_kept_total)]
        stock_token, _ = prefill(stock, prompt[:, :512], DynamicCache(config=stock.config))
        stock_cache = DynamicCache(config=stock.config)
        stock_token, stock_prefill = prefill(stock, kept, stock_cache)
        torch.set_num_threads(args.compare_threads)
        paired_s = paired_stock_s = 0.0
        for _ in range(args.compare_tokens):
            token, seconds = greedy_step(model, token, cache)
            stock_token, stock_seconds = greedy_step(stock, stock_token, stock_cache)
            paired_s += seconds
            paired_stock_s += stock_seconds
        stats = cache.stats
        kv_per_entry = cache.kv_bytes_per_entry()
    return {
        "length": length,
        "policy": policy,
        "budget": budget if policy != "full" else "-",
        "tokens_seen": stats.tokens_seen,
        "entries_kept": stats.entries_kept,
        "bytes_held": stats.bytes_held,
        "bytes_full_cache": stats.bytes_full_cache,
        "peak_bytes_held": stats.peak_bytes_held,
        "kv_bytes_per_entry": kv_per_entry,
        "evictions": stats.evictions,
        "prefill_s": prefill_s,
        "decode_tok_s": args.decode_tokens / decode_s if decode_s > 0 else float("inf"),
        "decode_vs_stock": paired_s / paired_stock_s,
        "stock_prefill_s": stock_prefill if policy == "full" else None,
        "max_rss_bytes": rss_bytes,
        "load_average": os.getloadavg()[0],
    }


def format_row(r: dict, stock_prefill: float | None) -> str:
    minimum = r["entries_kept"] * r["kv_bytes_per_entry"]
    prefill_ratio = f"{r['prefill_s'] / stock_prefill:.2f}" if stock_prefill else ""
    cells = (
        f"{r['length'] // 1024}K" if r["length"] % 1024 == 0 else str(r["length"]),
        r["policy"],
        r["budget"],
        f"{r['bytes_held'] / r['bytes_full_cache']:.4f}",
        f"{r['bytes_held'] / minimum:.4f}",
        f"{r['peak_bytes_held'] / MIB:.1f}",
        f"{r['prefill_s']:.1f}",
        f"{r['decode_tok_s']:.1f}",
        prefill_ratio,
        f"{r['decode_vs_stock']:.2f}",
        f"{r['max_rss_bytes'] / MIB:.0f}",
    )
    return "| " + " | ".join(cells) + " |"


def plan(args: argparse.Namespace) -> list[tuple[int, str, str]]:
    """Every row to run: "full" once per length, then each other policy at each budget."""
    skip = {tuple(item.split(":")) for item in args.skip.split(",") if item}
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        for policy in args.policies.split(","):
            if (str(length), policy) in skip:
                continue
            budgets = ["-"] if policy == "full" else args.budgets.split(",")
            rows.extend((length, policy, budget) for budget in budgets)
    return rows


def sweep(args: argparse.Namespace) -> None:
    """Run every planned row in its own child process and print the table."""
    import torch

    rows = plan(args)
    print(header("kv_memory.py", f"{torch.get_num_threads()} torch threads"))
    print()
    print(
        f"Model: random-weight LlamaForCausalLM, float32, {MODEL['num_hidden_layers']} layers, "
        f"hidden {MODEL['hidden_size']}, {MODEL['num_attention_heads']} attention heads, "
        f"{MODEL['num_key_value_heads']} KV heads, head_dim {MODEL['head_dim']}. Retention: "
        f"global allocation, default protections (a plain forward marks no question), chunk_tokens "
        f"{args.chunk_tokens}, {args.decode_tokens} greedy decode tokens timed for tok/s, then "
        f"{args.compare_tokens} more alternating with the stock model's on {args.compare_threads} "
        "torch thread(s) for 'decode vs stock', batch 1."
    )
    print()
    print(table_head(COLUMNS, 3))
    sys.stdout.flush()
    began = time.perf_counter()
    loads = []
    stock_prefill: dict[int, float] = {}  # per length, from its "full" row (planned first)
    for i, (length, policy, budget) in enumerate(rows, 1):
        print(f"[{i}/{len(rows)}] {length} {policy} {budget} ...", file=sys.stderr, flush=True)
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--one",
            f"{length},{policy},{budget}",
            "--chunk-tokens",
            str(args.chunk_tokens),
            "--decode-tokens",
            str(args.decode_tokens),
            "--compare-tokens",
            str(args.compare_tokens),
            "--compare-threads",
            str(args.compare_threads),
            "--seed",
            str(args.seed),
        ]
        try:
            result = run_json(command)
        except subprocess.CalledProcessError as error:
            print(error.stderr, file=sys.stderr)
            failed = f"failed (exit {error.returncode})"
            cells = (str(length), policy, budget, failed, *[""] * (len(COLUMNS) - 4))
            print("| " + " | ".join(cells) + " |", flush=True)
            continue
        loads.append(result["load_average"])
        if result["stock_prefill_s"] is not None:
            stock_prefill[length] = result["stock_prefill_s"]
        print(format_row(result, stock_prefill.get(length)), flush=True)
        print(
            f"    prefill {result['prefill_s']:.1f}s, decode {result['decode_tok_s']:.1f} tok/s, "
            f"{result['evictions']} evictions, load {result['load_average']:.1f}, "
            f"elapsed {time.perf_counter() - began:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    print()
    print(
        f"Sweep wall time {(time.perf_counter() - began) / 60:.1f} min. 1-minute load average "
        f"at the end of each row: min {min(loads, default=0):.1f}, "
        f"max {max(loads, default=0):.1f} ({os.cpu_count()} cores; above that, other processes "
        "shared the CPUs and the timing columns are inflated)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,16384,65536", help="context lengths, comma list")
    parser.add_argument(
        "--policies", default="full,streaming,knorm,snapkv,h2o", help="policies, comma list"
    )
    parser.add_argument(
        "--budgets", default="256,1024,0.1", help="tokens (int) or fraction of the prompt (float)"
    )
    parser.add_argument(
        "--skip",
        default="65536:h2o",
        help='length:policy pairs to leave out, comma list ("" runs everything)',
    )
    parser.add_argument("--chunk-tokens", type=int, default=2048, help="prefill chunk size")
    # A decoding eviction comes once per buffer's worth of tokens (128 by default at the larger
    # budgets): both decode columns span at least one, so they include its cost.
    parser.add_argument("--decode-tokens", type=int, default=160, help="greedy decode steps")
    parser.add_argument(
        "--compare-tokens",
        type=int,
        default=192,
        help="further decode steps, each followed by a stock model's step, for 'decode vs stock'",
    )
    parser.add_argument(
        "--compare-threads",
        type=int,
        default=1,
        help="torch threads for the 'decode vs stock' steps (see the module docstring)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the prompt")
    parser.add_argument("--one", help="run a single 'length,policy,budget' row (internal)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)), flush=True)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
