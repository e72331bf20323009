"""Qwen3-VL video streamed chunk by chunk (timestamped temporal patches, DeepStack features)
gives the logits of one forward pass over the processor's one-shot inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import write_family
from test_video_qa import WITH_LOGITS

from mmretain import media
from mmretain.api import load

QUESTION = "what is the colour ?"


# chunk_tokens=3 also splits each chunk's prefill mid-patch, DeepStack features with it.
@pytest.mark.parametrize("chunk_tokens", [None, 3])
def test_qwen3_vl_streams_like_one_shot(chunk_tokens, tmp_path, monkeypatch):
    # Each timestamp below 5 s ("<1.2 seconds>") gets a token of its own, so they must match.
    timestamps = [f"<{tenths / 10:.1f}" for tenths in range(50)]
    checkpoint = write_family("qwen3_vl", tmp_path / "qwen3_vl", timestamps)
    vlm = load(checkpoint, policy="snapkv", budget=10_000, chunk_tokens=chunk_tokens)
    rng = np.random.default_rng(1)
    path = tmp_path / "clip.mp4"
    # 64 x 128 frames: 8 of them exceed the processor's pixel budget and are shrunk, 2 are not,
    # so chunks must be sized as the whole video is.
    media.write_video(
        path, (rng.integers(0, 255, (64, 128, 3), dtype=np.uint8) for _ in range(8)), 2
    )
    [answer] = vlm.answer_video(
        path, QUESTION, fps=2, chunk_frames=2, generation_config=WITH_LOGITS
    )

    frames = np.concatenate(list(media.Video(path, fps=2).chunks(100)))
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}
    ]
    text = vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = vlm.processor(
        text=[text],
        videos=[frames],
        # the timestamp before each temporal patch comes from the frames' times in the file
        video_metadata=[{"total_num_frames": 8, "fps": 2, "frames_indices": list(range(8))}],
        do_sample_frames=False,
        return_tensors="pt",
    )
    with torch.inference_mode():
        expected = vlm.model(**inputs).logits[:, -1]
    torch.testing.assert_close(answer.logits[0], expected)
    # 4 temporal patches of 1 x 3 merged tokens (a lone 2-frame chunk would make 2 x 4 each)
    assert inputs["video_grid_thw"].tolist() == [[4, 2, 6]]
    assert answer.stats.seen_by_modality["video"] == 4 * 3
    assert answer.frames == 8


def test_chunk_timestamps_do_not_start_a_turn(tmp_path):
    """The question before the video stays the protected turn while timestamped chunks stream."""
    checkpoint = write_family("qwen3_vl", tmp_path / "qwen3_vl")
    vlm = load(checkpoint, policy="streaming", budget=20, sink=0, recent=2)
    rng = np.random.default_rng(2)
    path = tmp_path / "clip.mp4"
    media.write_video(
        path, (rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(8)), 2
    )
    question = vlm.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    prefix = vlm.run.adapter.video_prompt(vlm.processor, QUESTION, question_first=True).prefix
    start = next(i for i in range(len(prefix)) if prefix[i : i + len(question)] == question)
    asked = set(range(start, start + len(question)))
    kept_after_chunks = []

    def after_chunk(progress) -> None:
        layer = vlm.run.cache.layers[0]
        kept_after_chunks.append(all(asked <= set(head[0].tolist()) for head in layer.positions))

    vlm.answer_video(
        path,
        QUESTION,
        fps=2,
        chunk_frames=2,
        max_new_tokens=1,
        question_first=True,
        progress=after_chunk,
    )
    assert kept_after_chunks == [True] * 4
    assert vlm.run.cache.prompts == 1  # the question; no chunk's timestamps start a turn
    assert vlm.run.cache.turn == (start, start + len(question))


def test_a_fraction_is_of_the_whole_video_from_the_first_chunk(tmp_path):
    """Chunks go in as prompts, so the video's length is estimated from the first one; it is
    exact here, where every timestamp is one token."""
    timestamps = [f"<{tenths / 10:.1f}" for tenths in range(50)]
    checkpoint = write_family("qwen3_vl", tmp_path / "qwen3_vl", timestamps)
    vlm = load(checkpoint, policy="tova", budget=0.25, sink=0, recent=0, protect_turn=False)
    rng = np.random.default_rng(3)
    path = tmp_path / "clip.mp4"
    media.write_video(
        path, (rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(8)), 2
    )
    reports = []
    [answer] = vlm.answer_video(
        path, QUESTION, fps=2, chunk_frames=2, max_new_tokens=1, progress=reports.append
    )
    suffix = len(vlm.run.adapter.video_prompt(vlm.processor, QUESTION).suffix)
    slots = answer.stats.slots
    video_prompt = answer.stats.tokens_seen - suffix
    assert [r.entries_budget for r in reports] == [int(0.25 * video_prompt) * slots] * 4
    assert answer.stats.entries_kept == int(0.25 * answer.stats.tokens_seen) * slots
