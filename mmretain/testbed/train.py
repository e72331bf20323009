"""Training a test-bed model from scratch on a mix of the suites, short contexts first."""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .architectures import build
from .batching import answer_accuracy, encode
from .scoring import accuracy
from .suites import SUITES, samples
from .train_config import TrainConfig


class Ladder:
    """One suite's place on its ladder of lengths, moved up by the accuracy on its batches."""

    def __init__(self, rungs: tuple[int, ...], config: TrainConfig):
        self.rungs, self.config = rungs, config
        self.level = 0
        self.recent: deque[float] = deque(maxlen=config.window)

    @property
    def accuracy(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else 0.0

    @property
    def mastered(self) -> bool:
        full = len(self.recent) == self.recent.maxlen
        return full and self.accuracy >= self.config.mastery

    @property
    def at_top(self) -> bool:
        return self.level == len(self.rungs) - 1

    @property
    def climbed(self) -> bool:
        """Past the first rung (or mastered the only one)."""
        return self.level > 0 or (self.at_top and self.mastered)

    def length(self, rng: np.random.Generator) -> int:
        """The current rung most of the time; a lower one now and then, so none is forgotten."""
        if self.level and rng.random() < 0.25:
            return self.rungs[int(rng.integers(self.level))]
        return self.rungs[self.level]

    def record(self, batch_accuracy: float) -> None:
        self.recent.append(batch_accuracy)
        if self.mastered and not self.at_top:
            self.level += 1
            self.recent.clear()


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    done = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def held_out(model, processor, config: TrainConfig) -> dict[str, float]:
    """Accuracy per suite/question on a few held-out samples at the training length."""
    scores = {}
    for name in config.mix:
        for question in SUITES[name].questions:
            batch = samples(
                name, config.eval_samples, split="eval", seed=config.seed, question=question
            )
            scores[f"{name}/{question}"] = accuracy(model, processor, batch)
    return scores


def train(config: TrainConfig, out: str | Path, minutes: float | None = None) -> dict:
    """Train, save model + processor to ``out`` and return the run's record.

    ``minutes`` stops early (and says so in the record) if the machine is slower than planned.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model, processor = build(config.arch, config.size)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=0.01
    )
    names = list(config.mix)
    ladders = {name: Ladder(config.ladders[name], config) for name in names}
    drawn = dict.fromkeys(names, 0)
    history: list[dict] = []
    losses: list[float] = []
    start = time.perf_counter()
    smoothed = None
    scores: dict[str, float] = {}
    bar = tqdm(range(config.steps), desc=f"train {config.arch}", dynamic_ncols=True)
    for step in bar:
        # A suite that has mastered its training length is drawn a quarter as often.
        joined = [n for i, n in enumerate(names) if i == 0 or ladders[names[i - 1]].climbed]
        weights = np.array(
            [
                config.mix[n] * (0.25 if ladders[n].at_top and ladders[n].mastered else 1.0)
                if n in joined
                else 0.0
                for n in names
            ]
        )
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        length = ladders[name].length(rng)
        size = config.batch[name]
        batch = list(
            samples(name, size, drawn[name], split="train", seed=config.seed, length=length)
        )
        drawn[name] += size
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        inputs = encode(processor, batch, training=True)
        output = model(**inputs)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ladders[name].record(answer_accuracy(output.logits, inputs["labels"], processor.tokenizer))
        losses.append(round(output.loss.item(), 4))
        smoothed = losses[-1] if smoothed is None else 0.95 * smoothed + 0.05 * losses[-1]
        last = step + 1 == config.steps
        out_of_time = minutes is not None and time.perf_counter() - start > 60 * minutes
        if (step + 1) % config.eval_every == 0 or last or out_of_time:
            scores = held_out(model, processor, config)
            history.append(
                {
                    "step": step + 1,
                    "loss": round(smoothed, 4),
                    "seconds": round(time.perf_counter() - start, 1),
                    "lengths": {n: ladders[n].rungs[ladders[n].level] for n in names},
                    "batch_accuracy": {n: round(ladders[n].accuracy, 3) for n in names},
                    "held_out": scores,
                }
            )
            bar.write(json.dumps(history[-1]))
        mean = sum(scores.values()) / len(scores) if scores else float("nan")
        levels = ",".join(str(ladders[n].rungs[ladders[n].level]) for n in names)
        bar.set_postfix(loss=f"{smoothed:.3f}", acc=f"{mean:.2f}", lengths=levels)
        if out_of_time:
            break
    bar.close()
    record = {
        "config": asdict(config),
        "steps_done": step + 1,
        "stopped_early": step + 1 < config.steps,
        "seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
        "losses": losses,
    }
    save(model, processor, record, Path(out))
    return record


def save(model, processor, record: dict, out: Path) -> None:
    """A hub-style checkpoint: safetensors weights, config, tokenizer, processor, and the record."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
