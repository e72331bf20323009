"""Question-to-frame relevance with open_clip: loading, streaming, the prior and retrieval."""

from __future__ import annotations

import json
import weakref

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from mmretain import RetentionConfig  # noqa: E402
from mmretain.budget import allocate  # noqa: E402
from mmretain.errors import ConfigError, ModelLoadError  # noqa: E402
from mmretain.media import Video  # noqa: E402
from mmretain.policies import build_policy  # noqa: E402
from mmretain.policies.base import LayerView  # noqa: E402
from mmretain.relevance import (  # noqa: E402
    Relevance,
    RelevancePrior,
    RelevanceScorer,
    frame_marks,
    load_clip,
    marking,
    normalized,
    select_frames,
)
from mmretain.testbed.clip import PREPROCESS, model_config  # noqa: E402
from mmretain.testbed.tokenizer import build_tokenizer  # noqa: E402
from mmretain.testbed.video_file import write_needle_video  # noqa: E402


def random_clip(directory) -> dict[str, torch.Tensor]:
    """A random-weight open_clip model written as a hub checkpoint is; returns its weights."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(directory)
    config = {"model_cfg": model_config(), "preprocess_cfg": PREPROCESS}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{directory}")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    return state


def test_a_random_clip_saved_to_a_folder_loads_like_a_checkpoint(tmp_path):
    saved = random_clip(tmp_path / "clip")
    model, preprocess, tokenizer = load_clip(str(tmp_path / "clip"))
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert tokenizer(["what colour was the bright shape ?"]).shape == (1, 16)
    frame = np.zeros((56, 56, 3), np.uint8)
    from PIL import Image

    assert preprocess(Image.fromarray(frame)).shape == (3, 56, 56)


def test_pickled_weights_are_refused_unread(tmp_path, monkeypatch):
    random_clip(tmp_path / "clip")
    (tmp_path / "clip" / "open_clip_model.safetensors").rename(
        tmp_path / "clip" / "open_clip_pytorch_model.bin"
    )
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was unpickled"))
    with pytest.raises(ModelLoadError, match=r"only pickles: open_clip_pytorch_model\.bin"):
        load_clip(str(tmp_path / "clip"))
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_clip("ViT-B-32", tmp_path / "clip" / "open_clip_pytorch_model.bin")
    with pytest.raises(ConfigError, match="needs its weights"):
        load_clip("ViT-B-32")


def test_relevance_options_are_checked():
    with pytest.raises(ConfigError, match="does nothing"):
        Relevance()
    with pytest.raises(ConfigError, match="weight >= 0"):
        Relevance(prior=-1.0)
    with pytest.raises(ConfigError, match="retrieve must be a whole number"):
        Relevance(retrieve=1.5)


def test_scoring_streams_frames_in_bounded_memory(tmp_path):
    random_clip(tmp_path / "clip")
    scorer = RelevanceScorer(Relevance(model=str(tmp_path / "clip"), prior=1.0, batch_frames=8))
    alive: list[weakref.ref] = []
    most_alive = 0

    def chunks():
        nonlocal most_alive
        for _ in range(40):
            # What the scorer still holds of earlier chunks when it asks for the next one.
            most_alive = max(most_alive, sum(ref() is not None for ref in alive))
            chunk = np.random.default_rng(0).integers(0, 255, (16, 56, 56, 3), dtype=np.uint8)
            alive.append(weakref.ref(chunk))
            yield chunk

    scores = scorer.score_frames(chunks(), "which shape was bright ?")
    assert scores.shape == (640,)
    assert most_alive <= 1  # the chunk just scored, never an accumulation


def test_retrieval_picks_the_needle_chunk(tmp_path):
    scorer = RelevanceScorer(Relevance(retrieve=1))  # the shipped test-bed CLIP
    for depth in (0.15, 0.8):
        info = write_needle_video(tmp_path / "needle.mp4", frames=256, depth=depth, seed=3)
        scores = scorer.score_video(Video(tmp_path / "needle.mp4"), info["question"])
        chosen = select_frames(scores, chunk_frames=16, retrieve=1, context_frames=0)
        assert info["needle_frame"] in chosen and len(chosen) == 16


def test_select_frames_adds_a_thin_uniform_sample():
    scores = torch.zeros(100)
    scores[37] = 1.0
    frames = select_frames(scores, chunk_frames=16, retrieve=1, context_frames=4)
    assert frames == sorted(frames)
    assert set(range(32, 48)) <= set(frames) and len(frames) == 20
    assert frames[0] == 0 and frames[-1] == 99  # the sample spans the rest of the video


def _views(policy, seed=0):
    """Two layers of two heads of random keys over 12 entries, 4 text then 8 video."""
    g = torch.Generator().manual_seed(seed)
    modality = torch.tensor([[0] * 4 + [2] * 8], dtype=torch.int8)
    positions = torch.arange(12, dtype=torch.int32)[None]
    views = []
    for layer in range(2):
        keys = [torch.randn(1, 12, 8, generator=g) for _ in range(2)]
        init = [policy.init_state(layer, None, k[:, None]) for k in keys]
        state = [torch.zeros(1, 12) if i is None else i[:, 0] for i in init]
        views.append(
            LayerView(
                layer,
                keys,
                [positions] * 2,
                state,
                [modality] * 2,
                torch.randn(1, 2, 3, 8, generator=g),
                torch.arange(9, 12),
                0.35,
                12,
                MARKED,
            )
        )
    return views


# Frames of relevance 0, 0.1, 1 and 0.2 at positions 4-11, two entries per frame: frame 2 at
# positions 8 and 9. Every view carries them; a policy without a prior reads none.
MARKED = torch.cat([torch.zeros(4), frame_marks(torch.tensor([0.0, 0.1, 1.0, 0.2]), 8, 0, 4, 4)])


def _kept(policy, views, capacity=12):
    scores = policy.score_layers(views)
    flat = torch.cat([s for layer in scores for s in layer], dim=1)[0]
    layer = torch.arange(2).repeat_interleave(24)
    head = torch.arange(2).repeat_interleave(12).repeat(2)
    modality = torch.cat([m for v in views for m in v.modality], dim=1)[0]
    keep = allocate(
        flat,
        layer,
        head,
        capacity,
        mode="global",
        n_layers=2,
        n_heads=2,
        protected=torch.zeros(48, dtype=torch.bool),
        modality=modality,
        rank_normalize=not policy.comparable,
    )
    return keep.nonzero().squeeze(1).tolist()


def _marked(base, weight):
    return RelevancePrior(base, weight)


@pytest.mark.parametrize("name", ["snapkv", "knorm", "random"])
def test_a_prior_of_weight_zero_is_no_prior(name):
    base = build_policy(name)
    views = _views(base)
    assert _kept(_marked(base, 0.0), views) == _kept(base, views)


@pytest.mark.parametrize("name", ["snapkv", "knorm"])
def test_the_prior_moves_the_ranking_by_its_weight_alone(name):
    base = build_policy(name)
    views = _views(base)
    plain = _marked(base, 1e-9).score_layers(views)  # the calibrated scale, no prior to speak of
    for weight in (0.25, 1.0):
        scored = _marked(base, weight).score_layers(views)
        for plain_layer, layer in zip(plain, scored, strict=True):
            for p, s in zip(plain_layer, layer, strict=True):
                lift = torch.zeros(12)
                lift[4:] = torch.tensor([0.0, 0.0, 0.1, 0.1, 1.0, 1.0, 0.2, 0.2]) * weight
                assert torch.allclose(s[0] - p[0], lift, atol=1e-6)
    # The most relevant frame's entries rise into what is kept, one weight after another.
    needle = {e for layer in range(2) for head in range(2) for e in (8, 9)}
    kept_needle = []
    for weight in (0.0, 0.5, 2.0):
        kept = _kept(_marked(base, weight), views)
        kept_needle.append(sum(k % 12 in needle for k in kept))
    assert kept_needle == sorted(kept_needle) and kept_needle[-1] == 8


def test_the_prior_runs_under_global_on_the_testbed_model(tmp_path):
    """Streaming marks each frame's positions; the needle's entries are what the prior keeps."""
    from mmretain.api import load
    from mmretain.session import Session
    from mmretain.streaming import stream_video

    info = write_needle_video(tmp_path / "needle.mp4", frames=64, depth=0.5, seed=1)
    relevance = torch.zeros(64)
    relevance[info["needle_frame"]] = 1.0
    kept, marks = {}, []

    def stream(weight):
        vlm = load("testbed", policy="global", budget=0.05, relevance=Relevance(prior=1.0))
        vlm.run.policy.weight = weight

        with vlm._hooked():
            session = Session(vlm.run)
            mark = marking(session.cache, relevance)

            def on_chunk(*chunk):
                marks.append(chunk)
                mark(*chunk)

            stream_video(session, vlm.processor, Video(tmp_path / "needle.mp4"), on_chunk=on_chunk)
        return [set(p[0].tolist()) for layer in session.cache.layers for p in layer.positions]

    vlm = load("testbed", policy="global", budget=0.05)
    with vlm._hooked():
        session = Session(vlm.run)
        stream_video(session, vlm.processor, Video(tmp_path / "needle.mp4"))
    kept[None] = [set(p[0].tolist()) for layer in session.cache.layers for p in layer.positions]
    kept[0.0], kept[4.0] = stream(0.0), stream(4.0)
    start, tokens, first, frames, steps = marks[info["needle_frame"] // 16]
    step = (info["needle_frame"] - first) * steps // frames
    needle = set(range(start + step * tokens // steps, start + (step + 1) * tokens // steps))
    assert kept[0.0] == kept[None]  # weight 0: the same entries, bit for bit
    assert all(needle <= head for head in kept[4.0])
    assert not all(needle <= head for head in kept[None])


def test_answer_video_retrieves_and_answers_on_the_testbed(tmp_path):
    from mmretain.api import load

    info = write_needle_video(tmp_path / "needle.mp4", frames=512, depth=0.4, seed=2)
    relevance = Relevance(prior=1.0, retrieve=2, context_frames=8)
    vlm = load("testbed", policy="snapkv", relevance=relevance)
    (answer,) = vlm.answer_video(tmp_path / "needle.mp4", info["question"], question_first=True)
    assert answer.frames == 40  # 2 chunks of 16 and 8 frames of context, not 512
    scores = vlm._scorer.score_video(Video(tmp_path / "needle.mp4"), info["question"])
    assert info["needle_frame"] in select_frames(scores, 16, 2, 8)  # what streamed


def test_config_wraps_the_policy_only_for_a_prior():
    assert isinstance(
        RetentionConfig(policy="snapkv", relevance=Relevance(prior=0.5)).retention_policy,
        RelevancePrior,
    )
    config = RetentionConfig(policy="snapkv", relevance=Relevance(retrieve=2))
    assert config.retention_policy.name == "snapkv"
    assert not isinstance(config.retention_policy, RelevancePrior)
    with pytest.raises(ConfigError, match="Relevance"):
        RetentionConfig(relevance={"prior": 1.0})
    assert normalized(torch.tensor([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]


def test_video_qa_relevance_flags(tmp_path, capsys):
    from mmretain.cli import main

    info = write_needle_video(tmp_path / "needle.mp4", frames=128, depth=0.7, seed=4)
    video = str(tmp_path / "needle.mp4")
    ask = ["video-qa", video, "-q", info["question"], "--question-first", "--json"]
    # 20% of the 60 tokens: the 6-token question asked first fits in half of it (at 10% it
    # would keep only its last 3 tokens, and the answer loses what was asked).
    assert main([*ask, "--relevance", "clip", "--retrieve", "1", "--budget", "0.2"]) == 0
    (answer,) = json.loads(capsys.readouterr().out)["answers"]
    assert answer["frames"] == 24 and answer["answer"] == info["answer"]
    assert main([*ask, "--retrieve", "2"]) == 2
    assert "--relevance clip" in capsys.readouterr().err
    assert main([*ask, "--relevance", "clip", "--clip-model", str(tmp_path)]) == 2
    assert "no .safetensors weights" in capsys.readouterr().err


def test_relevance_marks_belong_to_the_cache_they_were_made_on():
    """A prior keeps nothing of a video: the marks live on the sequence's cache, a copy of the
    cache carries them, and another sequence of the same run starts without any."""
    import copy

    from mmretain.cache import RetentionCache

    cache, other = RetentionCache(2), RetentionCache(2)
    marking(cache, torch.tensor([0.0, 1.0]))(3, 4, 0, 2, 2)  # two frames, two entries each
    assert cache.position_relevance.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    branch = copy.deepcopy(cache)
    marking(branch, torch.tensor([0.5]))(7, 1, 0, 1, 1)
    assert branch.position_relevance.tolist()[-1] == 0.5
    assert cache.position_relevance.numel() == 7 and other.position_relevance.numel() == 0
    assert not {"frames", "by_position"} & set(vars(RelevancePrior(build_policy("snapkv"), 1.0)))
