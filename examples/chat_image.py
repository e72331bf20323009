"""Chat about an image over several turns; the KV cache carries from turn to turn.

    python examples/chat_image.py [IMAGE] [--model DIR] [--budget 0.5]

Without an image, draws one. Prints each reply and what the cache held after it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

import mmretain


def drawn_image(path: Path) -> Path:
    image = Image.new("RGB", (112, 112), "white")
    ImageDraw.Draw(image).ellipse((30, 30, 80, 80), fill="blue")
    image.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="an image file (default: a drawn one)")
    parser.add_argument("--model", default="testbed", help="checkpoint directory or hub id")
    parser.add_argument("--policy", default="snapkv")
    parser.add_argument("--budget", default="0.5")
    args = parser.parse_args()
    budget = float(args.budget) if "." in args.budget else args.budget
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image or drawn_image(Path(tmp) / "shape.png")
        vlm = mmretain.load(args.model, policy=args.policy, budget=budget)
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": str(image)},
                    {"type": "text", "text": "what shape is it ?"},
                ],
            },
        ]
        for follow_up in ("what colour is it ?", None):
            reply = vlm.chat(messages, max_new_tokens=8)
            s = reply.stats
            print(f"> {messages[-1]['content'][-1]['text']}\n{reply.text}")
            print(f"  [{s.tokens_seen} tokens seen, {s.kv_fraction:.0%} of a full cache kept]")
            if follow_up is None:
                break
            messages += [
                {"role": "assistant", "content": [{"type": "text", "text": reply.text}]},
                {"role": "user", "content": [{"type": "text", "text": follow_up}]},
            ]


if __name__ == "__main__":
    main()
