"""A tiny open_clip model for the test-bed, trained here on its frames and their descriptions.

It scores video frames against a question for `mmretain.relevance`: frames of drifting grey
shapes, and frames with the suite's bright shape, paired with what describes the bright one
(the suite's own questions, "red circle", "the bright shape was red"). Training uses the
sigmoid loss of SigLIP (Zhai et al., arXiv:2303.15343), which takes the many pairs a batch has
where one text fits several frames (every question fits every needle frame). The checkpoint is
written as open_clip lays out a hub model: ``open_clip_config.json``, the tokenizer, and
``open_clip_model.safetensors``, so it loads through `mmretain.relevance.load_clip` like any.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .draw import COLOURS, SHAPES
from .suites.base import sample_rng
from .suites.motion import FRAME, drifting_shapes
from .suites.video_needle import PROMPTS, flash
from .tokenizer import build_tokenizer, vocabulary


def model_config() -> dict[str, Any]:
    """open_clip's config of the test-bed CLIP: a 2-layer ViT on 56-pixel frames, a 2-layer
    text transformer over the test-bed's word vocabulary."""
    return {
        "embed_dim": 32,
        "init_logit_bias": -10.0,  # SigLIP's start: most pairs do not match
        "vision_cfg": {"image_size": FRAME, "patch_size": 14, "width": 64, "layers": 2},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": len(vocabulary()),
            "width": 64,
            "heads": 2,
            "layers": 2,
            # Non-empty: open_clip then reads the tokenizer saved beside the config.
            "hf_tokenizer_name": "testbed",
            "pool_type": "last",
            "pad_id": 0,
        },
    }


PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash"}


def descriptions(colour: str, shape: str) -> list[str]:
    """Every text that fits a frame showing a bright ``colour`` ``shape``."""
    return [*PROMPTS.values(), f"{colour} {shape}", f"the bright shape was {colour}"]


def batch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str], torch.Tensor]:
    """``size`` frames, half with a bright shape; the texts that describe any; labels
    [frames, texts] of +1 where a text fits a frame, else -1."""
    frames, bright = [], []
    for i in range(size):
        frame = drifting_shapes(rng, 1)[0]
        if i % 2 == 0:
            colour, shape = list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(4)]
            flash(rng, frame, colour, shape)
            bright.append(set(descriptions(colour, shape)))
        else:
            bright.append(set())
        frames.append(frame)
    texts = sorted(set().union(*bright))
    labels = torch.tensor([[1.0 if t in fits else -1.0 for t in texts] for fits in bright])
    return np.stack(frames), texts, labels


def train_clip(
    out: str | Path, steps: int = 4000, batch_size: int = 32, seed: int = 0, minutes: float = 10
) -> dict[str, Any]:
    """Train the test-bed CLIP from scratch and write it to ``out``; returns the record."""
    import open_clip

    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(out)
    config = {"model_cfg": model_config(), "preprocess_cfg": PREPROCESS}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=1) + "\n")
    model = open_clip.create_model(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    # Cosine decay: the last steps settle instead of jumping between batches.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    mean = torch.tensor(PREPROCESS["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS["std"]).view(1, 3, 1, 1)
    started, history = time.perf_counter(), []
    for step in range(steps):
        rng = sample_rng("clip", "train", step, seed)
        frames, texts, labels = batch(rng, batch_size)
        # Frames are already the model's size: the preprocessing reduces to this scaling. The
        # noise stands in for what video compression does to the frames it is shown later.
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        pixels = pixels + torch.from_numpy(rng.normal(0, 0.03, pixels.shape)).float()
        pixels = (pixels - mean) / std
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        logits = image @ text.T * model.logit_scale.exp() + model.logit_bias
        loss = -torch.nn.functional.logsigmoid(labels * logits).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            print(json.dumps(history[-1]), flush=True)
        if time.perf_counter() - started > minutes * 60:
            break
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    record = {
        "steps_done": step + 1,
        "batch_size": batch_size,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
