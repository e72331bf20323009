"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): Qwen2-VL with windowed vision attention
and video positions in absolute time.

Bai et al., "Qwen2.5-VL Technical Report", arXiv:2502.13923. Tokens, grids and streaming are
Qwen2-VL's (see `mmretain.adapters.qwen2_vl`); two things differ:

- the temporal M-RoPE index of a video advances by ``tokens_per_second * second_per_grid_ts``
  per temporal patch, so positions depend on the video's frame rate;
- the vision encoder attends within windows in most blocks and runs on patches reordered
  window by window, so its attention comes out in window order.
"""

from __future__ import annotations

import torch
from transformers.video_utils import VideoMetadata
from transformers.vision_utils import get_vision_window_index

from ..compat import rope_index
from ..vision_saliency import VisionSaliencyTap
from .qwen2_vl import Qwen2VLAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl (Qwen2.5-VL)"
    model_types = ("qwen2_5_vl",)

    @property
    def default_seconds_per_grid(self) -> float:
        """Seconds per temporal patch the processor assumes for frames given without metadata."""
        return self.temporal_patch / VideoMetadata(total_num_frames=1).sampled_fps

    def position_ids(
        self,
        token_types: torch.Tensor,
        image_grids: torch.Tensor | None,
        video_grids: torch.Tensor | None,
        second_per_grid_ts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """M-RoPE positions of a whole sequence [3, 1, n].

        ``second_per_grid_ts`` gives each video's seconds per temporal patch (the processor's
        output of that name: ``temporal_patch_size / fps``); by default, what the processor
        gives for frames passed without metadata.
        """
        if image_grids is None and video_grids is None:
            return super().position_ids(token_types, None, None)
        if video_grids is not None and second_per_grid_ts is None:
            second_per_grid_ts = torch.full((len(video_grids),), self.default_seconds_per_grid)
        return rope_index(
            self.model,
            token_types,
            image_grid_thw=image_grids,
            video_grid_thw=video_grids,
            second_per_grid_ts=second_per_grid_ts,
        )

    def vision_saliency_tap(self) -> VisionSaliencyTap:
        # The last full-attention block: window blocks only compare patches within a window.
        visual = self.model.model.visual
        block = visual.blocks[max(visual.fullatt_block_indexes)]
        return WindowOrderSaliencyTap(block.attn, visual, self.merge_area)


class WindowOrderSaliencyTap(VisionSaliencyTap):
    """A Qwen2-VL style tap that puts saliency back from window order into token order."""

    def __init__(self, module: torch.nn.Module, visual: torch.nn.Module, merge_area: int):
        super().__init__(module, has_cls=False, patches_per_token=merge_area)
        self.visual = visual
        self.calls: list[tuple[torch.Tensor, int]] = []  # (grid_thw, recordings before the call)
        self._handle = None

    def __enter__(self) -> WindowOrderSaliencyTap:
        self._handle = self.visual.register_forward_pre_hook(self._remember_grid, with_kwargs=True)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        super().__exit__(*exc)

    def _remember_grid(self, module, args, kwargs) -> None:
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        self.calls.append((grid, len(self.recorded)))

    def take(self) -> torch.Tensor:
        recorded, calls = self.recorded, self.calls
        self.recorded, self.calls = [], []
        config = self.visual.config
        grids = [grid for grid, _ in calls]
        bounds = [start for _, start in calls] + [len(recorded)]
        out = []
        for grid, start, end in zip(grids, bounds[:-1], bounds[1:], strict=True):
            # Per merged token in window order (each token's patches stay together), then back.
            merged = torch.cat(recorded[start:end]).view(-1, self.patches_per_token).sum(dim=1)
            window_index, _ = get_vision_window_index(
                grid, config.spatial_merge_size, config.window_size, config.patch_size
            )
            out.append(merged[torch.argsort(window_index)])
        return torch.cat(out) if out else torch.empty(0)
