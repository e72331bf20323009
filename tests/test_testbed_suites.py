"""The test-bed suites: deterministic by seed, disjoint splits, well-formed samples."""

from __future__ import annotations

import numpy as np
import pytest

from mmretain.errors import SuiteArgumentError
from mmretain.testbed import SUITES, make_sample
from mmretain.testbed.suites.video_distractors import EVERY
from mmretain.testbed.tokenizer import UNK, build_tokenizer


def pixels(sample) -> list[np.ndarray]:
    return [np.asarray(m) for m in sample.media]


def same(a, b) -> bool:
    return (
        a.answer == b.answer
        and a.metadata == b.metadata
        and all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))
    )


@pytest.mark.parametrize("suite", list(SUITES))
def test_same_arguments_give_the_same_sample(suite):
    assert same(make_sample(suite, 7, seed=3), make_sample(suite, 7, seed=3))
    assert same(make_sample(suite, 7, split="eval"), make_sample(suite, 7, split="eval"))


@pytest.mark.parametrize("suite", list(SUITES))
def test_train_and_eval_samples_differ(suite):
    train = [make_sample(suite, i) for i in range(4)]
    held_out = [make_sample(suite, i, split="eval") for i in range(4)]
    assert not any(same(a, b) for a in train for b in held_out)


@pytest.mark.parametrize("suite", list(SUITES))
def test_every_question_has_a_one_word_answer_the_tokenizer_knows(suite):
    tokenizer = build_tokenizer()
    for question in SUITES[suite].questions:
        sample = make_sample(suite, 1, question=question)
        assert sample.metadata["suite"] == suite and sample.metadata["question"] == question
        assert len(sample.answer.split()) == 1
        texts = [p["text"] for m in sample.conversation() for p in m["content"] if "text" in p]
        ids = tokenizer(" ".join(texts))["input_ids"]
        assert tokenizer.convert_tokens_to_ids(UNK) not in ids


def test_video_needle_sits_at_the_asked_depth():
    sample = make_sample("video-needle", 0, length=16, depth=1.0, question="colour")
    (video,) = sample.videos
    assert video.shape == (16, 56, 56, 3)
    chroma = video.max(axis=-1).astype(int) - video.min(axis=-1)  # grey shapes have none
    assert chroma.reshape(16, -1).max(axis=1).argmax() == 15


def test_dialogue_asks_in_turn_three_about_turn_one():
    sample = make_sample("dialogue", 2, question="text-colour")
    users = [m for m in sample.messages if m["role"] == "user"]
    assert len(users) == 3 and sample.answer in users[0]["content"][0]["text"]


def test_bad_requests_raise_typed_errors():
    with pytest.raises(SuiteArgumentError, match="choose from"):
        make_sample("no-such-suite", 0)
    with pytest.raises(SuiteArgumentError, match="asks"):
        make_sample("video-needle", 0, question="position")
    with pytest.raises(SuiteArgumentError, match=r"\[0, 1\]"):
        make_sample("video-needle", 0, depth=2.0)


def test_video_needle_among_distractors_is_the_only_bright_shape():
    sample = make_sample("video-needle-distractors", 3, length=64, depth=0.5, question="colour")
    (video,) = sample.videos
    needle = 32  # depth 0.5 of 64 frames, rounded
    distractors = sample.metadata["distractors"]
    assert len(distractors) == 64 // EVERY and needle not in distractors
    chroma = video.max(axis=-1).astype(int) - video.min(axis=-1)  # grey shapes have none
    coloured = [t for t in range(64) if chroma[t].max() > 0]
    assert coloured == sorted([*distractors, needle])  # every distractor drawn, nothing else
    # Brightness of each frame's coloured pixels: the needle's far above every distractor's.
    brightest = [int(video[t][chroma[t] > 0].max()) if t in coloured else 0 for t in range(64)]
    assert max(brightest[t] for t in distractors) < 0.85 * brightest[needle]
    assert same(
        make_sample("video-needle-distractors", 3, length=64, depth=0.5, question="colour"),
        sample,
    )
