"""The shipped test-bed checkpoints: load offline like hub checkpoints, answer correctly."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmretain import media
from mmretain.errors import UnknownTestbedModelError
from mmretain.testbed import MODELS, make_sample, model_path
from mmretain.testbed.cli import main
from mmretain.testbed.suites import Sample
from mmretain.testbed.suites.base import text, user


@pytest.fixture(scope="module", params=list(MODELS))
def shipped(request):
    path = model_path(request.param)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    return request.param, model.eval(), processor


def generate_answer(model, processor, sample: Sample) -> str:
    prompt = processor.apply_chat_template(sample.messages, add_generation_prompt=True)
    inputs = processor(
        text=[prompt],
        images=sample.images or None,
        videos=sample.videos or None,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    reply = out[0, inputs["input_ids"].shape[1] :]
    return processor.tokenizer.decode(reply, skip_special_tokens=True).strip()


@pytest.mark.parametrize(
    ("suite", "question"),
    [
        ("video-needle", "colour"),
        ("video-needle", "shape"),
        ("image-needle", "colour"),
        ("dialogue", "text-colour"),
    ],
)
def test_shipped_model_answers_a_held_out_sample(shipped, suite, question):
    _, model, processor = shipped
    sample = make_sample(suite, 0, split="eval", question=question)
    assert generate_answer(model, processor, sample) == sample.answer


def test_shipped_model_answers_a_needle_video_read_back_from_mp4(shipped, tmp_path):
    _, model, processor = shipped
    options = ["--frames", "32", "--needle-depth", "0.6", "--seed", "3"]
    assert main(["make-video", str(tmp_path / "needle.mp4"), *options]) == 0
    info = json.loads((tmp_path / "needle.json").read_text())
    frames = next(media.Video(tmp_path / "needle.mp4", fps=info["fps"]).chunks(info["frames"]))
    assert len(frames) == info["frames"] == 32
    content = [{"type": "video", "video": frames}, text(info["question"])]
    sample = Sample([user(*content)], info["answer"])
    assert generate_answer(model, processor, sample) == info["answer"]


def test_shipped_checkpoints_are_small_safetensors():
    for name in MODELS:
        weights = model_path(name) / "model.safetensors"
        assert weights.stat().st_size < 20 * 2**20
        assert not list(model_path(name).glob("*.bin"))


def test_unknown_model_name_is_a_typed_error():
    with pytest.raises(UnknownTestbedModelError, match="shipped: testbed"):
        model_path("testbed-nope")


@pytest.mark.parametrize("policy", ["global", "trimkv"])
def test_shipped_gates_load_with_no_flag(shipped, policy):
    import mmretain
    from mmretain.eval.testbed_tasks import FrameArray

    name = shipped[0]
    vlm = mmretain.load(name, policy=policy, budget=1.0)
    sample = make_sample("video-needle", 1, split="eval", question="shape")
    question = sample.question
    (answer,) = vlm.answer_video(FrameArray(sample.videos[0]), question, max_new_tokens=1)
    assert answer.text.strip() == sample.answer
    assert vlm.run.policy._gates is not None


@pytest.mark.parametrize("frames", ["0", "-5"])
def test_make_video_refuses_fewer_than_one_frame(tmp_path, capsys, frames):
    with pytest.raises(SystemExit) as done:  # refused by argparse, as --frames is parsed
        main(["make-video", str(tmp_path / "needle.mp4"), "--frames", frames])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert f"argument --frames: give a whole number from 1 to 2147483647, got '{frames}'" in err
    assert not (tmp_path / "needle.mp4").exists()
