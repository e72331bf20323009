"""Pictures of what a run kept: an image with its kept patches highlighted, and a strip of a
video's frames with their kept tokens.

The cache records, for every (layer, KV head), the original positions it still holds; the
fraction of (layer, head) slots that hold a position says how much of that token survived.
The adapter's `TokenTags` give each visual position its frame, row and column, which places it
on the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import media
from ..cache import EMPTY, RetentionCache
from ..tags import Modality
from .sample import EvalSample

STRIP_FRAMES = 16  # frames drawn in a video strip (the bar chart below shows all of them)
THUMBNAIL = 96  # pixels on the long side of a strip frame


def kept_fraction(cache: RetentionCache) -> torch.Tensor:
    """For each position seen, the fraction of (layer, KV head) slots still holding it, [seen]."""
    seen = cache.get_seq_length()
    counts = torch.zeros(seen)
    slots = 0
    for layer in cache.initialized_layers:
        for positions in layer.positions:
            held = positions[0][positions[0] != EMPTY].long()
            counts += torch.bincount(held, minlength=seen)[:seen].float()
            slots += 1
    return counts / max(slots, 1)


def image_grid(vlm: Any, sample: EvalSample) -> np.ndarray:
    """Kept fraction per patch [rows, cols] of the sample's first image, after `vlm.chat`."""
    images = [media.load_image(image) for image in sample.images]
    inputs = vlm.run.adapter.chat_inputs(vlm.processor, sample.messages, images)
    tags = vlm.run.adapter.tags(inputs["input_ids"], inputs)[0]
    where = (tags.modality == int(Modality.IMAGE)) & (tags.media == 0)
    rows, cols = tags.row[where], tags.col[where]
    positions = where.nonzero().squeeze(1)
    return _grid(kept_fraction(vlm.run.cache), positions, torch.zeros_like(rows), rows, cols)[0]


def video_grid(vlm: Any, sample: EvalSample) -> np.ndarray:
    """Kept fraction per token [frame groups, rows, cols] of the sample's video, after
    `vlm.answer_video`. A group is the frames the encoder fuses into one token (Qwen-VL: 2)."""
    video = sample.video
    assert video is not None
    adapter, stats = vlm.run.adapter, vlm.run.cache.stats
    count = stats.seen_by_modality[Modality.VIDEO.label]
    first = next(video.chunks(adapter.round_chunk_frames(2)))
    chunk = adapter.process_video_chunk(vlm.processor, first)
    rows, cols = adapter.video_token_grid(chunk, count, len(video))
    # The video's tokens follow the prompt's text before the video.
    offset = len(adapter.video_prompt(vlm.processor, sample.prompt).prefix)
    index = torch.arange(count // (rows * cols) * rows * cols)
    return _grid(
        kept_fraction(vlm.run.cache),
        offset + index,
        index // (rows * cols),
        index % (rows * cols) // cols,
        index % cols,
    )


def _grid(kept, positions, frame, row, col) -> np.ndarray:
    """Mean kept fraction per (frame, row, col); NaN where no token lands."""
    if not len(positions):
        raise ValueError("the sample has no visual tokens to draw")
    shape = (int(frame.max()) + 1, int(row.max()) + 1, int(col.max()) + 1)
    total, count = np.zeros(shape), np.zeros(shape)
    where = (frame.numpy(), row.numpy(), col.numpy())
    np.add.at(total, where, kept[positions].numpy())
    np.add.at(count, where, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


DROPPED = (0.55, 0.55, 0.6)  # the wash over dropped patches: visible on dark and light pictures


def _overlay(axes, picture: np.ndarray, kept: np.ndarray) -> None:
    """The picture, with dropped patches washed out in proportion to how much was dropped."""
    height, width = picture.shape[:2]
    axes.imshow(picture)
    shade = np.zeros((*kept.shape, 4))
    shade[..., :3] = DROPPED
    shade[..., 3] = 0.85 * (1 - np.nan_to_num(kept, nan=1.0))
    axes.imshow(shade, extent=(0, width, height, 0), interpolation="nearest")
    axes.set_axis_off()


def save_image_picture(path: Path, image: Any, grid: np.ndarray, title: str) -> None:
    """The image beside itself with dropped patches washed out (kept ones as they are), as a
    PNG."""
    from matplotlib.figure import Figure

    picture = np.asarray(media.load_image(image))
    figure = Figure(figsize=(8, 4.4), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.imshow(picture)
    left.set_axis_off()
    left.set_title("input")
    _overlay(right, picture, grid)
    right.set_title(f"kept: {np.nanmean(grid):.0%} of image-token entries")
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def save_video_strip(path: Path, video: media.Video, grid: np.ndarray, title: str) -> None:
    """Up to `STRIP_FRAMES` frames with their kept tokens highlighted, above the kept fraction
    of every frame group, as a PNG. Frames are decoded again chunk by chunk; only the
    thumbnails drawn are held."""
    from matplotlib.figure import Figure
    from PIL import Image

    groups = grid.shape[0]
    per_group = max(1, round(len(video) / groups))
    shown = sorted(
        {round(i * (groups - 1) / max(STRIP_FRAMES - 1, 1)) for i in range(STRIP_FRAMES)}
    )
    wanted = {g * per_group: g for g in shown}
    thumbnails: dict[int, np.ndarray] = {}
    done = 0
    for chunk in video.chunks(16):
        for offset, frame in enumerate(chunk):
            if done + offset in wanted:
                image = Image.fromarray(frame)
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                thumbnails[wanted[done + offset]] = np.asarray(image)
        done += len(chunk)
    figure = Figure(figsize=(max(6, 1.1 * len(shown)), 3.2), layout="constrained")
    top = figure.subfigures(2, 1, height_ratios=(1.2, 1))
    for axes, group in zip(top[0].subplots(1, len(shown), squeeze=False)[0], shown, strict=True):
        if group in thumbnails:
            _overlay(axes, thumbnails[group], grid[group])
        axes.set_axis_off()
        axes.set_title(f"{group * per_group}", fontsize=7)
    bars = top[1].subplots()
    kept = np.nanmean(grid.reshape(groups, -1), axis=1)
    bars.bar(np.arange(groups) * per_group, kept, width=per_group * 0.9, color="tab:blue")
    bars.set_xlabel("frame")
    bars.set_ylabel("kept")
    bars.set_ylim(0, 1)
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
