"""Chat about an image over several turns; the KV cache carries from turn to turn.

    python examples/chat_image.py [IMAGE -q QUESTION ...] [--model DIR] [--policy P] [--budget B]

Without an image, draws a held-out test-bed image (grey shapes and one bright one) and asks
about its bright shape, turn after turn, printing the expected answers beside the replies.
Policy and budget default to the library's: the best policy the model ships, a quarter of the
prompt.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mmretain
from mmretain.defaults import AUTO, DEFAULT_BUDGET
from mmretain.testbed.suites import make_sample


def testbed_image(folder: Path) -> tuple[Path, list[str], list[str]]:
    """A held-out image-needle picture, its questions and their answers."""
    sample = make_sample("image-needle", 0, split="eval", question="colour")
    path = folder / "needle.png"
    sample.images[0].save(path)
    return path, [q for q, _ in sample.questions], [a for _, a in sample.questions]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("image", nargs="?", help="an image file (default: a test-bed picture)")
    parser.add_argument("-q", "--question", action="append", dest="questions")
    parser.add_argument("--model", default="testbed", help="checkpoint directory or hub id")
    parser.add_argument("--policy", default=AUTO, help="the best the model ships when auto")
    parser.add_argument(
        "--budget", default=str(DEFAULT_BUDGET), help="a fraction of the prompt, tokens or bytes"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.image:
            image, questions, expected = args.image, args.questions or ["what is this ?"], []
        else:
            image, questions, expected = testbed_image(Path(tmp))
        vlm = mmretain.load(args.model, args.policy, args.budget)
        print(vlm.describe())
        messages: list[dict] = []
        for turn, question in enumerate(questions):
            content = [{"type": "text", "text": question}]
            if turn == 0:
                content.insert(0, {"type": "image", "image": str(image)})
            messages.append({"role": "user", "content": content})
            reply = vlm.chat(messages, max_new_tokens=8)
            s = reply.stats
            want = f"  (expected: {expected[turn]})" if expected else ""
            print(f"> {question}\n{reply.text}{want}")
            print(
                f"  [{s.tokens_seen} tokens seen, {s.tokens_kept_total:.1f} kept: "
                f"{s.kv_fraction:.0%} of a full cache]"
            )
            messages.append(
                {"role": "assistant", "content": [{"type": "text", "text": reply.text}]}
            )


if __name__ == "__main__":
    main()
