"""Generate under a KV budget with a stock transformers model, and compare policies.

Builds a tiny random-weight LLaVA-1.5, saves it with ``save_pretrained`` and loads it back with
``from_pretrained`` (the path a real checkpoint takes), then generates from one image and a
question under several policies, printing what each kept.

    python examples/retain_generate.py [--model DIR_OR_HUB_ID]
"""

from __future__ import annotations

import argparse
import tempfile

import mmretain

IMAGE_TOKEN = 120


def tiny_llava(directory: str) -> str:
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    torch.manual_seed(0)
    text = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=7,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN)
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", help="a LLaVA-1.5 checkpoint directory; default: a tiny one")
    parser.add_argument("--budget", default="32", help="tokens, a fraction or bytes")
    args = parser.parse_args()
    # Imported once the arguments are read, so that --help answers at once.
    import torch
    from transformers import LlavaForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or tiny_llava(tmp)
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        question = torch.randint(3, 100, (12,), generator=torch.Generator().manual_seed(1))
        input_ids = torch.cat([torch.full((64,), IMAGE_TOKEN), question])[None]
        pixel_values = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
        inputs = {"input_ids": input_ids, "pixel_values": pixel_values}
        reference = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        print(
            f"{'policy':<10} {'same answer':>11} {'kept/seen':>10} {'KV bytes':>9} "
            f"{'of full':>8}  tokens kept by modality"
        )
        for policy in ("full", "streaming", "knorm", "snapkv", "h2o", "tova", "fastv", "visionzip"):
            config = mmretain.RetentionConfig(policy=policy, budget=args.budget)
            with mmretain.retain(model, config) as run:
                # The image is the context to compress; the question's 12 tokens are kept (they
                # fit in half of the default 32-token budget, the most protections may take).
                answer = model.generate(
                    **inputs, max_new_tokens=8, do_sample=False, question_tokens=len(question)
                )
            s = run.stats
            # Tokens: entries over the (layer, head) slots, so a token kept everywhere is one.
            kept = {k: round(v, 1) for k, v in s.tokens_kept.items() if v}
            print(
                f"{policy:<10} {torch.equal(answer, reference)!s:>11} "
                f"{s.tokens_kept_total:>4.0f}/{s.tokens_seen:<5} "
                f"{s.bytes_held:>9} {s.kv_fraction:>8.1%}  {kept}"
            )


if __name__ == "__main__":
    main()
