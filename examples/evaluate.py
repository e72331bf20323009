"""How much accuracy does each KV budget cost? Evaluate one task under several policies.

    python examples/evaluate.py [--model DIR] [--task vqav2=DATA_DIR] [--budgets 0.1,0.25]

By default: the embedded test-bed model on the test-bed's video needle (128 frames). With
``--task NAME=DIR``, any benchmark task read from a local copy of its hub dataset. Results go to
``--out`` (rerunning resumes); the table printed is the one in its report.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="testbed", help="checkpoint directory or hub id")
    parser.add_argument(
        "--task", default="video-needle@128", help="a test-bed task, or BENCHMARK=LOCAL_DIR"
    )
    parser.add_argument("--policies", default="full,global,snapkv")
    parser.add_argument("--budgets", default="0.1,0.25")
    parser.add_argument("--limit", type=int, default=20, help="samples, spread over the task")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    # Imported once the arguments are read, so that --help answers at once.
    from mmretain.eval import Locations, RunSettings, cells, evaluate, select_tasks
    from mmretain.eval.tasks import TASKS

    name, _, path = args.task.partition("=")
    suite = TASKS[name].suite if name in TASKS else "testbed"
    settings = RunSettings(model=args.model, max_new_tokens=8)
    grid = cells(args.policies.split(","), args.budgets.split(","), settings)
    locations = Locations({name: Path(path)} if path else {})
    with tempfile.TemporaryDirectory() as tmp:
        results = evaluate(
            args.out or Path(tmp),
            select_tasks(suite, [name]),
            grid,
            settings,
            limit=args.limit,
            locations=locations,
            pictures=0,
        )
    full = next((r.score for r in results if r.policy == "full"), None)
    print(f"{'cell':<16} {'score':>7} {'% of full':>10} {'KV held %':>10}")
    for r in results:
        relative = f"{100 * r.score / full:.1f}" if full else "—"
        print(f"{r.cell:<16} {r.score:>7.1f} {relative:>10} {r.kv_percent or 0:>10.1f}")


if __name__ == "__main__":
    main()
