"""Train retention gates for a frozen model, then let them decide what a small KV budget keeps.

    python examples/train_gates.py [--model DIR] [--steps 300] [--budget 8] [--out DIR]

By default: the embedded test-bed model, trained on the test-bed suites with the recipe its
shipped gates were trained with (300 steps at a capacity of 8 tokens; a few minutes on a CPU),
and compared with the full cache and SnapKV on held-out needle videos. The gates are tied
(one readout for every layer), so ``policy="global"`` ranks all layers, heads and modalities
together.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import mmretain


def accuracy(vlm: mmretain.RetainedVLM, task: str, samples: int) -> tuple[float, float]:
    """Share of right answers, and the mean share of the cache entries the prompt made that
    stayed."""
    from mmretain.eval.testbed_tasks import testbed_tasks

    data = testbed_tasks()[task].open()
    right, held = 0, 0.0
    for index in range(samples):
        reference = data.reference(index)
        sample = data.sample(index, reference, None)
        # Every answer is one word: its first token decides it, as in eval/gates_testbed.py.
        (answer,) = vlm.answer_video(sample.video, sample.prompt, max_new_tokens=1)
        right += answer.text.strip() == reference.answer
        held += answer.stats.entries_kept / (answer.stats.tokens_seen * answer.stats.slots)
    return right / samples, held / samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="testbed", help="test-bed checkpoint directory")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--budget", type=int, default=8, help="capacity per head, in tokens")
    parser.add_argument("--width", type=int, default=512, help="hidden width of each gate")
    parser.add_argument("--samples", type=int, default=32, help="held-out videos to answer")
    parser.add_argument("--eval-budget", default="0.1", help="KV budget of the comparison")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    # Imported once the arguments are read, so that --help answers at once.
    from mmretain.errors import BudgetWarning
    from mmretain.gates import train_gates
    from mmretain.location import load_model
    from mmretain.testbed import model_path, training_batches

    model = str(model_path(args.model)) if args.model.startswith("testbed") else args.model
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        train_gates(
            load_model(model),
            training_batches(model),
            budget=args.budget,
            tied=True,
            steps=args.steps,
            out=out,
            width=args.width,
        )
        rows = []
        # At 10% of a 78-token prompt the question's 8 tokens do not fit in half of the budget,
        # so every policy alike keeps only its last ones: said once, before the table.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BudgetWarning)
            for policy, options in (("full", {}), ("snapkv", {}), ("global", {"gates": out})):
                budget = 1.0 if policy == "full" else args.eval_budget
                vlm = mmretain.load(model, policy=policy, budget=budget, policy_kwargs=options)
                rows.append((policy, *accuracy(vlm, "video-needle@32", args.samples)))
        for w in caught:  # any other warning is shown as it would have been
            if not issubclass(w.category, BudgetWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if any(issubclass(w.category, BudgetWarning) for w in caught):
            print("(at this budget the question is protected in part: its last tokens)")
        else:
            print()
        print(f"{'policy':<10} {'accuracy':>9} {'KV kept':>8}")
        for policy, score, held in rows:
            print(f"{policy:<10} {score:>9.1%} {held:>8.1%}")


if __name__ == "__main__":
    main()
