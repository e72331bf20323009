"""``train-gates``: train retention gates for a model and save them where a policy finds them.

    train-gates --model M --data testbed|DIR --budget B --steps N --out DIR [--resume]
                [--tied | --untied] [--lr LR] [--checkpoint-every K] [--width W] [--seed S]
                [--accumulate A] [--floor R] [--dtype bfloat16] [--checkpointing]

On several GPUs: ``accelerate launch --num_processes P -m mmretain.gates ...`` (each process
takes every P-th batch; the gates' gradients are averaged).

To ship gates with a model, write them into the model's directory: ``--out M/retention_gates``
(tied; loaded by ``policy="global"``) or ``--out M/retention_gates_untied --untied`` (loaded by
``policy="trimkv"``). Only the two ``retention_gates.*`` files need to ship; ``checkpoints/``
is for ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from ..command import USER_ERRORS, ArgumentParser, real, run_command, whole

PROG = "mmretain train-gates"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Train retention gates (TRIM-KV, or tied for one global ranking) for a "
        "frozen model by distillation under a KV capacity loss.",
    )
    parser.add_argument("--model", required=True, help="model directory or hub id")
    parser.add_argument(
        "--data",
        required=True,
        help="'testbed' (the test-bed suites) or a directory of *.jsonl / *.safetensors batches",
    )
    parser.add_argument("--budget", type=whole(1), required=True, help="capacity M in tokens")
    parser.add_argument("--steps", type=whole(1), required=True, help="optimizer steps")
    parser.add_argument("--out", type=Path, required=True, help="directory for the gates")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument(
        "--tied",
        dest="tied",
        action="store_true",
        default=True,
        help="one readout shared by all layers, for policy 'global' (default)",
    )
    variant.add_argument(
        "--untied", dest="tied", action="store_false", help="TRIM-KV gates, for policy 'trimkv'"
    )
    parser.add_argument("--lr", type=real(0, above=True), default=1e-3)
    parser.add_argument("--checkpoint-every", type=whole(1), default=100)
    parser.add_argument("--width", type=whole(1), default=512, help="hidden width of each gate")
    parser.add_argument("--seed", type=whole(0), default=0)
    parser.add_argument(
        "--accumulate", type=whole(1), default=1, help="batches per optimizer step and process"
    )
    parser.add_argument(
        "--floor",
        type=real(0, 1, below=True),
        default=0.0,
        help="share of the budget every head is asked to keep, in [0, 1) (tied gates)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="dtype of the frozen model (default: the checkpoint's); gates train in float32",
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="recompute the frozen model's layers in the backward pass (less memory, ~1.3x time)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: train(args, argv), (*USER_ERRORS, ImportError))


def train(args: argparse.Namespace, argv: list[str]) -> None:
    # Imported here so that `--help` and argument errors come back without loading torch.
    from transformers import AutoConfig

    from ..adapters import adapter_class
    from ..location import checkpoint_location, load_model
    from .data import BatchDirectory, testbed_batches
    from .train import check_settings, train_gates

    start = time.perf_counter()
    # Bad input fails before the weights load: the settings, a batch folder, then where the
    # model is ("testbed" names the shipped one), its family (the test-bed batches need its
    # processor) and its vocabulary (the batches' ids must be in it).
    names = ("budget", "steps", "width", "checkpoint_every", "accumulate", "out")
    check_settings(**{name: getattr(args, name) for name in names})
    batches = None if args.data == "testbed" else BatchDirectory(args.data)
    model, local = checkpoint_location(args.model)
    config = AutoConfig.from_pretrained(model, local_files_only=local)
    adapter_class(config, model)
    if batches is None:
        batches = testbed_batches(model)
    else:
        batches.check_vocabulary(config.get_text_config().vocab_size)
    train_gates(
        load_model(model, dtype=args.dtype),
        batches,
        budget=args.budget,
        tied=args.tied,
        steps=args.steps,
        out=args.out,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        width=args.width,
        seed=args.seed,
        accumulate=args.accumulate,
        floor=args.floor,
        checkpointing=args.checkpointing,
    )
    # How the gates were made, for the reports that use them.
    record = {
        "command": shlex.join([*PROG.split(), *argv]),
        "seconds": round(time.perf_counter() - start),
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"retention gates written to {args.out}")
    return 0
