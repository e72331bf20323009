"""`mmretain gates`: bring gates trained elsewhere into mmretain's format.

    mmretain gates import-trimkv CKPT_DIR --model MODEL_DIR [--out DIR]

``import-trimkv`` reads a TRIM-KV / DBTrimKV checkpoint (``config.json`` and
``trimkv_weights.pth``, see `mmretain.gates.trimkv_import`), checks it against the base model and
writes ``retention_gates.json`` and ``retention_gates.safetensors``. By default they go where the
policies find them with no flag: ``MODEL_DIR/retention_gates`` for tied (DBTrimKV) gates, loaded
by ``--policy global``, and ``MODEL_DIR/retention_gates_untied`` for per-layer (TRIM-KV) gates,
loaded by ``--policy trimkv``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..command import ArgumentParser, run_command

PROG = "mmretain gates"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    trimkv = commands.add_parser(
        "import-trimkv", help="import TRIM-KV / DBTrimKV gates from the authors' checkpoint"
    )
    trimkv.add_argument("checkpoint", type=Path, help="directory with config.json and the .pth")
    trimkv.add_argument("--model", required=True, help="the base model's local directory")
    trimkv.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the gates (default: the model's retention_gates folder, or "
        "retention_gates_untied for per-layer gates)",
    )
    return parser


def import_command(args: argparse.Namespace) -> None:
    # Imported here so that `--help` and argument errors come back without loading torch.
    from transformers import AutoConfig

    from ..location import checkpoint_location
    from .trimkv_import import import_trimkv

    path, local = checkpoint_location(args.model)
    if args.out is None and not local:
        raise ValueError(
            f"--model {args.model} is a hub id: give --out DIR for the gates, or download the "
            "model and pass its directory"
        )
    config = AutoConfig.from_pretrained(path, local_files_only=local)
    gates = import_trimkv(args.checkpoint, config)
    folder = "retention_gates" if gates.config.tied else "retention_gates_untied"
    out = args.out or Path(path) / folder
    gates.save_pretrained(out)
    policy = "global" if gates.config.tied else "trimkv"
    print(
        f"wrote {'tied' if gates.config.tied else 'per-layer'} gates for "
        f"{gates.config.describe()} to {out} (trained for memory size {gates.config.budget}); "
        f"use them with policy {policy!r}"
        + ("" if args.out is None else f" and policy_kwargs={{'gates': '{out}'}}")
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: import_command(args))
