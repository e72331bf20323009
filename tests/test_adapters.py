"""LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL and Qwen3-VL behind the one adapter interface.

Every family is a tiny random-weight model of the real transformers class, prompted through the
family's real processor (see `conftest.tiny_family`), so the tags, positions and embeddings are
checked against what the processor emitted and what the model itself computes.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_family
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

import mmretain
from mmretain.adapters import adapter_for
from mmretain.errors import UnsupportedModelError
from mmretain.tags import Modality
from mmretain.vision_saliency import VISION_ATTENTION_NAME, VisionSaliencyTap

NEW_TOKENS = 5
PROMPTS = {
    "image": [3, "image", 4],
    "two images": [3, "image", 2, "image", 3],
    "video": [3, "video", 4],
    "image and video": [2, "image", 2, "video", 3],
}
CASES = [
    ("llava_next", "image"),
    ("llava_next", "two images"),
    *[
        (name, prompt)
        for name in ("llava_onevision", "qwen2_5_vl", "qwen3_vl")
        for prompt in PROMPTS
    ],
]
STREAMING = ["llava_onevision", "qwen2_5_vl"]
IMAGE, VIDEO = Modality.IMAGE, Modality.VIDEO


def greedy(model, inputs):
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)


def placeholders(tiny, inputs) -> dict[Modality, int]:
    ids, config = inputs["input_ids"], tiny.model.config
    return {
        IMAGE: int((ids == config.image_token_id).sum()),
        VIDEO: int((ids == getattr(config, "video_token_id", -1)).sum()),
    }


@torch.no_grad()
def feature_lengths(tiny, inputs) -> dict[Modality, list[int]]:
    """Tokens per image and per video, as the model's own encoders produce them."""
    inner = tiny.model.model
    qwen = tiny.family.startswith("qwen")
    lengths = {IMAGE: [], VIDEO: []}
    if "pixel_values" in inputs:
        if qwen:
            out = inner.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        else:
            extra = {"batch_num_images": inputs.get("batch_num_images")}
            if tiny.family == "llava_next":  # one image or several: LLaVA-NeXT crops them all
                extra = {}
            out = inner.get_image_features(inputs["pixel_values"], inputs["image_sizes"], **extra)
        lengths[IMAGE] = [len(f) for f in out.pooler_output]
    if "pixel_values_videos" in inputs:
        grid = [inputs["video_grid_thw"]] if qwen else []
        out = inner.get_video_features(inputs["pixel_values_videos"], *grid)
        lengths[VIDEO] = [len(f) for f in out.pooler_output]
    return lengths


def language_model_inputs(tiny, inputs) -> dict:
    """What a vanilla forward hands the decoder: merged embeddings and positions."""
    seen = {}

    def remember(module, args, kwargs):
        seen.update(kwargs)

    handle = tiny.model.model.language_model.register_forward_pre_hook(remember, with_kwargs=True)
    try:
        with torch.no_grad():
            tiny.model(**inputs)
    finally:
        handle.remove()
    return seen


def model_positions(tiny, inputs) -> torch.Tensor:
    """The positions the model gives a prompt's tokens, as its decoder takes them."""
    positions = language_model_inputs(tiny, inputs)["position_ids"]
    if positions is None:  # 1-D RoPE: the decoder counts 0..n-1 itself
        return torch.arange(inputs["input_ids"].shape[1])[None]
    return positions


# -- tags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "prompt"), CASES)
def test_tags_cover_exactly_the_placeholders_the_processor_emitted(name, prompt):
    tiny = tiny_family(name)
    inputs = tiny.prompt(PROMPTS[prompt])
    tags = adapter_for(tiny.model).tags(inputs["input_ids"], inputs)
    lengths = feature_lengths(tiny, inputs)
    for modality, count in placeholders(tiny, inputs).items():
        media = tags.media[tags.modality == int(modality)]
        assert len(media) == count
        # each medium's tokens carry its index, in prompt order, as many as the model encodes
        assert torch.equal(media, media.sort().values)
        assert torch.bincount(media, minlength=len(lengths[modality])).tolist() == lengths[modality]


@pytest.mark.parametrize(
    ("name", "prompt"),
    [c for c in CASES if c[0].startswith("llava")],
)
def test_llava_newlines_close_their_row(name, prompt):
    """A newline token sits one column past the last of its row: ``col == grid width``."""
    tiny = tiny_family(name)
    inputs = tiny.prompt(PROMPTS[prompt])
    tags = adapter_for(tiny.model).tags(inputs["input_ids"], inputs)
    embeds = language_model_inputs(tiny, inputs)["inputs_embeds"][0]
    newline = (embeds == tiny.model.model.image_newline).all(dim=-1)
    visual = tags.modality[0] != int(Modality.TEXT)
    assert newline.any() and not (newline & ~visual).any()
    media, frame, row, col = tags.media[0], tags.frame[0], tags.row[0], tags.col[0]
    for p in newline.nonzero().squeeze(1).tolist():
        c = int(col[p])
        assert torch.equal(col[p - c : p], torch.arange(c, dtype=col.dtype))
        assert bool((row[p - c : p] == row[p]).all())
        grid = (
            visual
            & (media == media[p])
            & (frame == frame[p])
            & (tags.modality[0] == tags.modality[0, p])
        )
        assert c == int(col[grid & ~newline].max()) + 1


def test_qwen3_vl_tags_each_temporal_patch_run_as_a_frame():
    """Qwen3-VL writes a timestamp before every temporal patch; the runs between are frames."""
    tiny = tiny_family("qwen3_vl")
    inputs = tiny.prompt(PROMPTS["image and video"], fps=2)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    tags = adapter_for(tiny.model).tags(inputs["input_ids"], inputs)
    video = (tags.modality[0] == int(VIDEO)).nonzero().squeeze(1)
    frames = tags.frame[0, video]
    per_frame = (h // 2) * (w // 2)
    assert torch.equal(frames, torch.arange(t).repeat_interleave(per_frame).to(frames.dtype))
    # a run per frame: the first token of every frame but the first follows text
    starts = video[frames.diff(prepend=frames[:1] - 1) != 0]
    assert len(starts) == t
    assert bool((tags.modality[0, starts[1:] - 1] == int(Modality.TEXT)).all())


# -- full budget: the unmodified model -------------------------------------------------------
@pytest.mark.parametrize("policy", ["snapkv", "visionzip"])
@pytest.mark.parametrize(("name", "prompt"), CASES)
def test_full_budget_generate_is_vanilla(name, prompt, policy):
    tiny = tiny_family(name)
    inputs = tiny.prompt(PROMPTS[prompt])
    expected = greedy(tiny.model, inputs)
    budget = inputs["input_ids"].shape[1] + NEW_TOKENS
    with mmretain.retain(tiny.model, policy=policy, budget=budget, recent=8) as run:
        got = greedy(tiny.model, inputs)
    assert torch.equal(got, expected)
    for modality, count in placeholders(tiny, inputs).items():
        assert run.stats.seen_by_modality[modality.label] == count


@pytest.mark.parametrize("name", ["llava_next", "llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_chunked_prefill_is_vanilla(name):
    tiny = tiny_family(name)
    inputs = tiny.prompt(PROMPTS["image" if name == "llava_next" else "image and video"])
    expected = greedy(tiny.model, inputs)
    budget = inputs["input_ids"].shape[1] + NEW_TOKENS
    with mmretain.retain(tiny.model, policy="snapkv", budget=budget, chunk_tokens=16):
        got = greedy(tiny.model, inputs)
    assert torch.equal(got, expected)


# -- positions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llava_next", "llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_positions_of_a_prompt_are_the_models(name):
    tiny = tiny_family(name)
    inputs = tiny.prompt(PROMPTS["two images" if name == "llava_next" else "image and video"])
    adapter = adapter_for(tiny.model)
    # Qwen2.5-VL's video positions depend on the frame rate the processor saw
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if name == "qwen2_5_vl" else {}
    positions = adapter.position_ids(
        adapter.token_types(inputs["input_ids"]),
        inputs.get("image_grid_thw"),
        inputs.get("video_grid_thw"),
        **extra,
    )
    assert torch.equal(adapter.shape_positions(positions), model_positions(tiny, inputs))


def test_qwen2_5_vl_video_positions_follow_the_frame_rate():
    """Temporal positions advance by tokens_per_second x seconds per temporal patch."""
    tiny = tiny_family("qwen2_5_vl")
    adapter = adapter_for(tiny.model)
    frames = tiny.video()
    words = ["what", tiny.video_placeholder, "?"]
    default = tiny.process(words, videos=[frames])  # frames without metadata
    one_fps = tiny.process(words, videos=[frames], fps=1)
    types = adapter.token_types(default["input_ids"])
    grid = default["video_grid_thw"]
    assert torch.equal(adapter.position_ids(types, None, grid), model_positions(tiny, default))
    at_one_fps = adapter.position_ids(types, None, grid, one_fps["second_per_grid_ts"])
    assert torch.equal(at_one_fps, model_positions(tiny, one_fps))
    assert not torch.equal(at_one_fps, model_positions(tiny, default))


# -- streaming -----------------------------------------------------------------------------------
def stream(tiny, frames: torch.Tensor, chunk_frames: int = 2) -> list[dict]:
    """The processor's tensors for each chunk of frames, as a streamer prepares them."""
    adapter = adapter_for(tiny.model)
    size = adapter.round_chunk_frames(chunk_frames)
    return [
        adapter.process_video_chunk(tiny.processor, frames[i : i + size])
        for i in range(0, len(frames), size)
    ]


@pytest.mark.parametrize("name", STREAMING)
@torch.no_grad()
def test_streamed_video_embeddings_are_the_one_shot_features(name):
    tiny = tiny_family(name)
    adapter = adapter_for(tiny.model)
    frames = tiny.video()
    whole = tiny.process(["what", tiny.video_placeholder, "?"], videos=[frames])
    grid = [whole["video_grid_thw"]] if "video_grid_thw" in whole else []
    one_shot = tiny.model.model.get_video_features(whole["pixel_values_videos"], *grid)
    one_shot = torch.cat(list(one_shot.pooler_output))
    chunks = stream(tiny, frames)
    assert len(chunks) > 1
    streamed = [adapter.video_chunk_embeddings(chunk) for chunk in chunks]
    streamed = torch.cat([*streamed, adapter.video_tail_embeddings()])
    torch.testing.assert_close(streamed, one_shot)


@pytest.mark.parametrize("name", STREAMING)
@torch.no_grad()
def test_planned_video_layout_gets_the_models_positions(name):
    """A streamer plans the whole video from its first chunk; positions come from that plan."""
    tiny = tiny_family(name)
    adapter = adapter_for(tiny.model)
    frames = tiny.video()
    words = ["what", "is", tiny.video_placeholder, "the", "colour", "?"]
    whole = tiny.process(words, videos=[frames])
    # the prompt's ids around its one video placeholder, before the processor expands it
    ids = tiny.processor.tokenizer(" ".join(words))["input_ids"]
    cut = ids.index(adapter.video_token_id)
    first = stream(tiny, frames)[0]
    grid = adapter.planned_video_grid(first, len(frames))
    if grid is None:  # 1-D positions: the plan is a token count
        per_frame = adapter.video_chunk_embeddings(first).shape[0] / adapter.round_chunk_frames(2)
        count = int(per_frame * len(frames)) + adapter.video_tail_embeddings().shape[0]
    else:
        count = int(grid.prod()) // adapter.merge_area
    types = torch.tensor([[0] * cut + [int(VIDEO)] * count + [0] * (len(ids) - cut - 1)])
    assert torch.equal(types, adapter.token_types(whole["input_ids"]))
    positions = adapter.position_ids(types, None, None if grid is None else grid[None])
    assert torch.equal(adapter.shape_positions(positions), model_positions(tiny, whole))


def test_qwen3_vl_refuses_to_stream_precomputed_embeddings():
    tiny = tiny_family("qwen3_vl")
    adapter = adapter_for(tiny.model)
    chunk = stream(tiny, tiny.video())[0]
    with pytest.raises(UnsupportedModelError, match="DeepStack"):
        adapter.video_chunk_embeddings(chunk)


# -- VisionZip: encoder saliency on the visual tokens ----------------------------------------
def saliency(tiny, tap: VisionSaliencyTap, inputs) -> VisionSaliencyTap:
    """Run a vanilla forward with ``tap`` open on the vision encoder."""
    adapter = adapter_for(tiny.model)
    saved = adapter.vision_attention_implementation()
    adapter.set_vision_attention_implementation(VISION_ATTENTION_NAME)
    try:
        with tap, torch.no_grad():
            tiny.model(**inputs)
    finally:
        adapter.set_vision_attention_implementation(saved)
    return tap


def views_per_image(tiny, inputs) -> list[int]:
    """How many views of each image the encoder sees: the base view, plus crops if cropped."""
    config = tiny.model.config
    sizes = inputs["image_sizes"].tolist() if "image_sizes" in inputs else []
    if len(sizes) > 1 and "batch_num_images" in inputs:
        return [1] * len(sizes)  # LLaVA-OneVision encodes several images from base views only
    pinpoints, side = config.image_grid_pinpoints, config.vision_config.image_size
    return [image_size_to_num_patches(size, pinpoints, side) for size in sizes]


@pytest.mark.parametrize(("name", "prompt"), [c for c in CASES if c[0].startswith("llava")])
def test_anyres_saliency_lands_on_the_tokens_of_its_view(name, prompt):
    tiny = tiny_family(name)
    inputs = tiny.prompt(PROMPTS[prompt])
    adapter = adapter_for(tiny.model)
    packed = adapter.vision_saliency_tap()
    raw = saliency(tiny, VisionSaliencyTap(packed.module, packed.has_cls, 1), inputs).recorded
    tags = adapter.tags(inputs["input_ids"], inputs)
    modality, media, frame = tags.modality[0], tags.media[0], tags.frame[0]
    got = torch.zeros(tags.shape[1])
    got[modality != int(Modality.TEXT)] = saliency(tiny, packed, inputs).take()
    embeds = language_model_inputs(tiny, inputs)["inputs_embeds"][0]
    newline = (embeds == tiny.model.model.image_newline).all(dim=-1)
    assert bool((got[newline] == 0).all())
    views = iter(raw)
    for k, count in enumerate(views_per_image(tiny, inputs)):
        image = (modality == int(IMAGE)) & (media == k) & ~newline
        crops = [next(views) for _ in range(count)]
        # the base view is laid out as the encoder saw it; a canvas token is a crop's patch
        torch.testing.assert_close(got[image & (frame == 0)], crops[0])
        if name == "llava_next":  # (LLaVA-OneVision may shrink its canvas: values blend)
            assert bool(torch.isin(got[image & (frame == 1)], torch.cat(crops[1:])).all())
    if "pixel_values_videos" in inputs:
        frames = torch.stack(list(views))
        side = adapter.side
        pooled = tiny.model.model.apply_pooling(frames.view(len(frames), side * side, 1))
        torch.testing.assert_close(got[(modality == int(VIDEO)) & ~newline], pooled.flatten())
    assert next(views, None) is None


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_saliency_comes_back_in_token_order(name):
    """Qwen2.5-VL encodes patches window by window; saliency must follow the model's tokens.

    The encoder's output before the merger is in its working order and its merged output in
    token order; matching the two rows gives the model's own permutation to check against.
    """
    tiny = tiny_family(name)
    inputs = tiny.prompt(PROMPTS["image and video"], fps=2)
    adapter = adapter_for(tiny.model)
    visual = tiny.model.model.visual
    tap = adapter.vision_saliency_tap()
    outputs = []
    handle = visual.register_forward_hook(
        lambda module, args, out: outputs.append((out.last_hidden_state, out.pooler_output))
    )
    try:
        working_order = saliency(
            tiny, VisionSaliencyTap(tap.module, False, adapter.merge_area), inputs
        ).take()
    finally:
        handle.remove()
    expected, offset = [], 0
    for working, tokens in outputs:
        with torch.no_grad():
            merged = visual.merger(working)
        order = torch.cdist(tokens, merged).argmin(dim=1)
        assert torch.equal(order.sort().values, torch.arange(len(order)))
        expected.append(working_order[offset + order])
        offset += len(order)
    if name == "qwen2_5_vl":  # the windows really do reorder this prompt's patches
        assert not torch.equal(torch.cat(expected), working_order)
    torch.testing.assert_close(saliency(tiny, tap, inputs).take(), torch.cat(expected))
