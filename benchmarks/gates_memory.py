"""Peak memory and time of one gate-training step: the dense-bias path against the fused one.

Each row runs in a fresh child process (the script re-invoked with ``--one``), so its RSS
high-water mark belongs to that row alone; the child's address space is capped (``--cap-gib``)
so that a row which does not fit fails on its own instead of starving the machine. The child
builds a seeded random-weight ``Qwen2ForCausalLM`` shaped like Qwen2-VL-2B's text model (hidden
1536, 12 heads on 2 KV heads, head_dim 128, MLP 8960, vocabulary 151,936) with ``--layers``
decoder layers, in bfloat16, and tied gates (width 512, float32). A batch is one row of T
random token ids whose last 64 tokens are targets. After an untimed warm-up step at T = 64,
one training step (`distillation_loss` with backward, then AdamW) is timed; "peak RSS" is the
child's high-water mark, "step peak" that minus the RSS once the model and gates were built.
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

GIB = 1024**3
MODEL = {
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
TARGETS = 64
COLUMNS = ("T", "path", "layers", "checkpointing", "s / step", "step peak (GiB)", "peak RSS (GiB)")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def run_one(length: int, attention: str, layers: int, checkpointing: bool, seed: int) -> dict:
    """Build the model and gates, warm up, time one training step; the row as a dict."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mmretain.gates import RetentionGates
    from mmretain.gates.loss import distillation_loss

    torch.manual_seed(seed)
    config = Qwen2Config(**MODEL, num_hidden_layers=layers)
    # Built in bfloat16 directly: a float32 copy would set the high-water mark by itself.
    torch.set_default_dtype(torch.bfloat16)
    model = Qwen2ForCausalLM(config).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    gates = RetentionGates.for_model(model, tied=True)
    optimizer = torch.optim.AdamW(gates.parameters(), lr=1e-3)
    options = {"budget": 512, "global_capacity": True, "attention": attention}

    def step(n: int) -> None:
        ids = torch.randint(3, MODEL["vocab_size"], (1, n))
        target = torch.zeros_like(ids)
        target[:, -TARGETS:] = 1
        batch = {"input_ids": ids, "target_mask": target}
        distillation_loss(
            model,
            gates,
            batch,
            backward=torch.Tensor.backward,
            checkpointing=checkpointing,
            **options,
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    built = rss_gib()
    step(TARGETS)
    start = time.perf_counter()
    step(length)
    seconds = time.perf_counter() - start
    peak = peak_rss_gib()
    return {
        "seconds": seconds,
        "peak_gib": peak,
        "step_gib": peak - built,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        default="2048:dense:2,2048:fused:2,8192:dense:2,8192:fused:2,8192:fused:1,"
        "8192:fused:2:ckpt,32768:fused:2",
        help="comma list of T:path:layers[:ckpt]",
    )
    parser.add_argument("--cap-gib", type=float, default=16.0, help="address-space cap per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", help="run a single row (internal)")
    args = parser.parse_args()
    if args.one:
        cap = int(args.cap_gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        length, attention, layers, *flags = args.one.split(":")
        row = run_one(int(length), attention, int(layers), flags == ["ckpt"], args.seed)
        print(json.dumps(row), flush=True)
        return

    print(header("gates_memory.py", f"address space capped at {args.cap_gib:g} GiB per row"))
    print()
    print(table_head(COLUMNS, 4))
    loads = []
    for spec in args.rows.split(","):
        length, attention, layers, *flags = spec.split(":")
        cells = [length, attention, layers, "yes" if flags == ["ckpt"] else "no"]
        print(f"{spec} ...", file=sys.stderr, flush=True)
        command = [sys.executable, os.path.abspath(__file__), "--one", spec]
        command += ["--cap-gib", str(args.cap_gib), "--seed", str(args.seed)]
        try:
            row = run_json(command)
        except subprocess.CalledProcessError as error:
            reason = "out of memory" if "memory" in error.stderr.lower() else "failed"
            print(error.stderr[-1500:], file=sys.stderr)
            cells += [
                f"{reason} (> {args.cap_gib:g} GiB)" if reason != "failed" else reason,
                "",
                "",
            ]
        else:
            loads.append(row["load"])
            cells += [f"{row['seconds']:.1f}", f"{row['step_gib']:.2f}", f"{row['peak_gib']:.2f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    print()
    print(
        f"1-minute load average after each row: min {min(loads, default=0):.1f}, max "
        f"{max(loads, default=0):.1f} ({os.cpu_count()} cores; above that, other processes "
        "shared the CPUs and the seconds are inflated)."
    )


if __name__ == "__main__":
    main()
