"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): a base view plus high-resolution crops.

Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge" (2024),
https://llava-vl.github.io/blog/2024-01-30-llava-next/ . Each image is encoded twice ("anyres"):
once whole at the encoder's resolution, once as a grid of crops of a best-fit resolution. The
crops' features are stitched into one canvas, stripped of the padding the resize added, and
every canvas row is closed by the learned ``image_newline`` embedding.

Tags of one image's tokens, in prompt order (``media`` counts images in the prompt):

- ``frame == 0``: the base view, ``side x side`` tokens, row-major;
- ``frame == 1``: the canvas, ``rows x (cols + 1)`` tokens, row-major; the token at
  ``col == cols`` of each row is the newline.

An image encoded from its base view alone (LLaVA-OneVision's multi-image prompts) has no canvas;
one newline follows the base view, tagged ``frame == 0, row == side - 1, col == side``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..compat import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    pack_image_features,
    unpad_image,
)
from ..tags import Modality, TokenTags
from ..vision_saliency import VisionSaliencyTap
from .base import tag_grid
from .llava import LlavaAdapter


class MediaLayout(Protocol):
    """Where one image's or video's tokens sit; ``tag`` writes them from ``start`` on."""

    @property
    def tokens(self) -> int: ...

    def tag(
        self, tags: TokenTags, row: int, start: int, modality: Modality, media: int
    ) -> None: ...


@dataclass(frozen=True)
class ImageLayout:
    """A ``side x side`` base view, then a ``rows x cols`` canvas with newlines, or one newline."""

    side: int
    canvas: tuple[int, int] | None

    @property
    def tokens(self) -> int:
        if self.canvas is None:
            return self.side * self.side + 1
        rows, cols = self.canvas
        return self.side * self.side + rows * (cols + 1)

    def tag(self, tags: TokenTags, row: int, start: int, modality: Modality, media: int) -> None:
        side = self.side
        tag_grid(tags, row, start, side * side, modality, media, side, side)
        start += side * side
        if self.canvas is None:
            # The closing newline sits after the base view's last row, one column past its end.
            tag_grid(
                tags, row, start, 1, modality, media, side + 1, side, first=side * side + side - 1
            )
        else:
            rows, cols = self.canvas
            tag_grid(tags, row, start, rows * (cols + 1), modality, media, cols + 1, rows, 1)


def tag_media(
    tags: TokenTags,
    input_ids: torch.Tensor,
    token_id: int,
    modality: Modality,
    layouts: Iterable[MediaLayout],
) -> None:
    """Tag each placeholder token of ``token_id`` with ``modality``, and lay the media out on them
    in prompt order (across batch rows), as far as ``layouts`` reach."""
    ids = input_ids.cpu()
    tags.modality[ids == token_id] = int(modality)
    layouts = iter(layouts)
    media = 0
    for b in range(ids.shape[0]):
        positions = (ids[b] == token_id).nonzero().squeeze(1).tolist()
        done = 0
        while done < len(positions):
            layout = next(layouts, None)
            if layout is None:
                return
            layout.tag(tags, b, positions[done], modality, media)
            done += layout.tokens
            media += 1


class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next (LLaVA-NeXT)"
    model_types = ("llava_next",)

    @property
    def side(self) -> int:
        """Tokens per side of one encoder view."""
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def images(self, inputs: dict[str, Any]) -> list[tuple[list[int], bool]]:
        """(height, width) of each image of a forward's inputs, and whether it is cropped."""
        sizes = inputs.get("image_sizes")
        return [] if sizes is None else [(size, True) for size in sizes.tolist()]

    def canvas_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """The canvas as the model packs it, given its unpadded size."""
        return rows, cols

    def image_layout(self, image_size: list[int], cropped: bool) -> ImageLayout:
        """Layout of an image's tokens, as the model packs its features."""
        config = self.model.config
        side = self.side
        if not cropped:
            return ImageLayout(side, None)
        crops_h, crops_w = get_anyres_image_grid_shape(
            image_size, config.image_grid_pinpoints, config.vision_config.image_size
        )
        # The model's own unpadding rule, run on an empty canvas of the stitched size.
        canvas = unpad_image(torch.empty(0, crops_h * side, crops_w * side), image_size)
        return ImageLayout(side, self.canvas_shape(*canvas.shape[1:]))

    def tags(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> TokenTags:
        tags = TokenTags.text(*input_ids.shape)
        layouts = [self.image_layout(*image) for image in self.images(inputs)]
        tag_media(tags, input_ids, self.model.config.image_token_id, Modality.IMAGE, layouts)
        return tags

    # -- VisionZip: encoder saliency, packed like the features --------------------------------
    def vision_saliency_tap(self) -> VisionSaliencyTap:
        return PackedSaliencyTap(super().vision_saliency_tap(), self)

    def pack_features(
        self, views: torch.Tensor, image_size: list[int], newline: torch.Tensor
    ) -> torch.Tensor:
        """The model's packing of one image's per-view features [views, side * side, d]."""
        packed = pack_image_features(
            self.model,
            [views],
            [image_size],
            self.model.config.vision_feature_select_strategy,
            newline,
        )
        return packed[0]

    def pack_saliency(
        self, inputs: dict[str, Any], views: Iterator[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per-token saliency of each medium of one forward, from its views' patch saliency."""
        config = self.model.config
        out = []
        for size, cropped in self.images(inputs):
            count = 1
            if cropped:
                count = image_size_to_num_patches(
                    size, config.image_grid_pinpoints, config.vision_config.image_size
                )
            maps = torch.stack([next(views) for _ in range(count)])[..., None]
            out.append(self.pack_features(maps, size, maps.new_zeros(1))[:, 0])
        return out


class PackedSaliencyTap(VisionSaliencyTap):
    """Encoder saliency laid out as the model lays out its visual tokens.

    The encoder sees each crop (or video frame) as one view; the model then stitches, unpads,
    shrinks or pools the views and adds newlines. Packing a one-channel saliency map the model's
    own way puts each token's saliency where its feature goes; newline tokens get zero.

    The sizes that packing needs reach only the model's media encoders (``generate`` calls them
    itself, before any forward), so while the tap is open it wraps the encoders of this model
    instance to pack the views each call recorded.
    """

    ENCODERS = ("get_image_features", "get_video_features")

    def __init__(self, tap: VisionSaliencyTap, adapter: LlavaNextAdapter):
        super().__init__(tap.module, tap.has_cls, tap.patches_per_token)
        self.adapter = adapter
        self.packed: list[torch.Tensor] = []

    def __enter__(self) -> PackedSaliencyTap:
        inner = self.adapter.model.model
        for name in self.ENCODERS:
            if hasattr(inner, name):
                setattr(inner, name, self._packing(getattr(inner, name)))
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        inner = self.adapter.model.model
        for name in self.ENCODERS:
            if name in vars(inner):
                delattr(inner, name)  # the class's method shows again
        super().__exit__(*exc)

    def _packing(self, encode: Callable) -> Callable:
        signature = inspect.signature(encode)

        @functools.wraps(encode)
        def packing(*args, **kwargs):
            start = len(self.recorded)
            out = encode(*args, **kwargs)
            views = iter(self.recorded[start:])
            del self.recorded[start:]
            call = signature.bind(*args, **kwargs).arguments
            self.packed.extend(self.adapter.pack_saliency(call, views))
            return out

        return packing

    def take(self) -> torch.Tensor:
        """Saliency per visual token, in the order the model encoded the media."""
        packed, self.packed = self.packed, []
        return torch.cat(packed) if packed else torch.empty(0)
