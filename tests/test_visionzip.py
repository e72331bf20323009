"""VisionZip keeps the visual tokens the vision encoder attends to most."""

from __future__ import annotations

import pytest
import torch

import mmretain
from mmretain.compat import cache_kwargs


def test_llava_keeps_tokens_the_cls_query_attends_to_most(vlm):
    if vlm.family != "llava":
        pytest.skip("CLS attention is LLaVA's signal")
    inputs = vlm.prompt([4, "image", 4])
    tower = vlm.model.model.vision_tower
    tower.set_attn_implementation("eager")
    try:
        out = tower(inputs["pixel_values"], output_attentions=True)
    finally:
        tower.set_attn_implementation("sdpa")
    cls_attention = out.attentions[vlm.model.config.vision_feature_layer][0, :, 0, 1:].mean(0)
    budget = 8 + 6  # all 8 text tokens (current turn) + 6 of the 16 image tokens
    with mmretain.retain(
        vlm.model, policy="visionzip", budget=budget, allocation="uniform", sink=0, recent=0
    ) as run:
        vlm.model(**inputs, **cache_kwargs(run.new_cache()), use_cache=True)
    expected = set((cls_attention.topk(6).indices + 4).tolist())
    for layer in run.cache.layers:
        for positions, modality in zip(layer.positions, layer.modality, strict=True):
            kept_image = set(positions[modality == int(mmretain.Modality.IMAGE)].tolist())
            assert kept_image == expected


def test_text_model_is_refused_and_left_intact(llama):
    with pytest.raises(ValueError, match="has no vision encoder"):
        mmretain.retain(llama.model, policy="visionzip", budget=64).__enter__()
    assert llama.model.config._attn_implementation == "sdpa"
    assert not llama.model.model._forward_pre_hooks
    assert torch.is_tensor(llama.model(input_ids=torch.tensor([[3, 4]])).logits)
