"""Long video streamed chunk by chunk: same answer as one-shot prefill when the budget holds all,
flat memory when it does not, and many questions answered from one compressed context."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

import mmretain
from mmretain import Session, cli, media, stream_video
from mmretain.api import load

QUESTIONS = ["what colour is the video ?", "which came first ?"]


# Greedy, with the logits of every step: an answer's first step is the one-shot prefill's last.
WITH_LOGITS = GenerationConfig(
    max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True
)


def cut_video(tmp_path, *, frames: int, kept: float, seed: int):
    """An 8 fps random-noise mp4 of ``frames`` frames with only the first ``kept`` of its bytes."""
    rng = np.random.default_rng(seed)
    whole = tmp_path / "whole.mp4"
    media.write_video(
        whole, (rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(frames)), 8
    )
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * kept)])
    return cut


def one_shot_logits(vlm, video_file, question):
    frames = np.concatenate(list(media.Video(video_file, fps=4).chunks(1000)))
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
    ]
    text = vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = vlm.processor(
        text=[text], videos=[frames], do_sample_frames=False, return_tensors="pt"
    )
    with torch.inference_mode():
        return vlm.model(**inputs).logits[:, -1]


def test_streamed_video_equals_one_shot_prefill(checkpoint, video_file):
    vlm = load(checkpoint, policy="snapkv", budget=10_000)
    answers = vlm.answer_video(
        video_file, QUESTIONS, fps=4, chunk_frames=4, generation_config=WITH_LOGITS
    )
    assert [a.question for a in answers] == QUESTIONS
    for question, answer in zip(QUESTIONS, answers, strict=True):
        torch.testing.assert_close(answer.logits[0], one_shot_logits(vlm, video_file, question))
    assert answers[0].stats.seen_by_modality["video"] == 20 // 2 * 4  # (t, h, w) = (10, 4, 4)
    assert answers[0].frames == 20


def test_compress_once_answer_many_shares_the_context(checkpoint, video_file):
    vlm = load(checkpoint, policy="snapkv", budget=12, recent=4, protect_turn=False)
    many = vlm.answer_video(video_file, QUESTIONS, fps=4, chunk_frames=4, max_new_tokens=3)
    alone = [
        vlm.answer_video(video_file, q, fps=4, chunk_frames=4, max_new_tokens=3)[0]
        for q in QUESTIONS
    ]
    assert [a.tokens for a in many] == [a.tokens for a in alone]
    stats = many[0].stats
    assert stats.kept_by_modality["video"] < stats.seen_by_modality["video"] * 2 * 2


def test_peak_kv_is_set_by_budget_not_video_length(checkpoint, tmp_path):
    peaks = []
    for frames in (16, 64):
        path = tmp_path / f"v{frames}.mp4"
        media.write_video(path, (np.full((56, 56, 3), i % 255, np.uint8) for i in range(frames)), 8)
        vlm = load(checkpoint, policy="tova", budget=24, recent=4, protect_turn=False)
        answer = vlm.answer_video(path, QUESTIONS[0], fps=8, chunk_frames=4, max_new_tokens=2)[0]
        peaks.append(answer.stats.peak_bytes_held)
    assert peaks[1] == peaks[0]


def test_a_fraction_is_of_the_whole_video_from_the_first_chunk(checkpoint, video_file):
    vlm = load(checkpoint, policy="tova", budget=0.25, sink=0, recent=0, protect_turn=False)
    reports = []
    answers = vlm.answer_video(
        video_file, QUESTIONS, fps=4, chunk_frames=4, max_new_tokens=1, progress=reports.append
    )
    suffixes = [len(vlm.run.adapter.video_prompt(vlm.processor, q).suffix) for q in QUESTIONS]
    assert suffixes[0] != suffixes[1]
    slots = answers[0].stats.slots
    video_prompt = answers[0].stats.tokens_seen - suffixes[0]
    # The video's length is known when the first chunk arrives: the budget is a quarter of all
    # of it then already, not a quarter of the few tokens seen so far.
    assert {r.entries_budget for r in reports} == {int(0.25 * video_prompt) * slots}
    assert reports[0].tokens_seen < video_prompt / 2
    # Each answer keeps a quarter of its own prompt, whatever the other questions are.
    for answer, suffix in zip(answers, suffixes, strict=True):
        assert answer.stats.tokens_seen == video_prompt + suffix
        assert answer.stats.entries_kept == int(0.25 * answer.stats.tokens_seen) * slots


def test_the_text_before_a_video_gets_the_budget_of_the_whole_prompt(checkpoint, video_file):
    vlm = load(checkpoint, policy="tova", budget=0.25, sink=0, recent=0, protect_turn=False)
    capacities = []
    evict = vlm.run.evict
    vlm.run.evict = lambda cache, capacity, *room: (
        capacities.append(capacity) or evict(cache, capacity, *room)
    )
    (answer,) = vlm.answer_video(
        video_file, QUESTIONS[0], fps=4, chunk_frames=4, max_new_tokens=1, question_first=True
    )
    prompt = vlm.run.adapter.video_prompt(vlm.processor, QUESTIONS[0], question_first=True)
    suffix = len(prompt.suffix)
    video_prompt = answer.stats.tokens_seen - suffix
    # The question before the video is not cut to a quarter of itself before the video arrives.
    assert set(capacities[:-1]) == {int(0.25 * video_prompt) * answer.stats.slots}


def test_a_fraction_follows_the_frames_streamed_when_a_file_is_cut_short(checkpoint, tmp_path):
    cut = cut_video(tmp_path, frames=64, kept=1 / 3, seed=3)
    vlm = load(checkpoint, policy="tova", budget=0.1, sink=0, recent=0, protect_turn=False)
    with pytest.warns(UserWarning):
        (answer,) = vlm.answer_video(cut, QUESTIONS[0], fps=8, chunk_frames=4, max_new_tokens=1)
    assert 0 < answer.frames < 64
    assert answer.stats.entries_kept == int(0.1 * answer.stats.tokens_seen) * answer.stats.slots


def test_cli_video_qa_json(checkpoint, video_file, capsys):
    code = cli.main(
        [
            "video-qa",
            str(video_file),
            "-q",
            QUESTIONS[0],
            "-q",
            QUESTIONS[1],
            "--model",
            str(checkpoint),
            "--budget",
            "0.5",
            "--fps",
            "4",
            "--chunk-frames",
            "4",
            "--max-new-tokens",
            "3",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [a["question"] for a in result["answers"]] == QUESTIONS
    assert result["answers"][0]["stats"]["tokens_seen"] > 40


def test_cli_video_qa_table(checkpoint, video_file, capsys):
    code = cli.main(
        [
            "video-qa",
            str(video_file),
            "-q",
            QUESTIONS[0],
            "--model",
            str(checkpoint),
            "--fps",
            "4",
            "--max-new-tokens",
            "2",
            "--budget",
            "0.5",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    # No gates ship with this checkpoint: the default policy is SnapKV, and the output says so.
    assert out.startswith(
        f"policy snapkv, KV budget 0.5 of the prompt (50%)\nQ: {QUESTIONS[0]}\nA:"
    )
    assert "video" in out and "KV bytes held" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.mp4"], "not found"),
        (["--policy", "nope"], "registered policies"),
        (["-q", "what \udcff ?"], "-q holds bytes that are not UTF-8 text"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(checkpoint, video_file, capsys, args, message):
    video = [args.pop(0)] if args and args[0].endswith(".mp4") else [str(video_file)]
    code = cli.main(["video-qa", *video, "-q", "what ?", "--model", str(checkpoint), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mmretain: error:") and err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fps", "0"], "argument --fps: give a finite number above 0, got '0'"),
        (["--fps", "inf"], "argument --fps: give a finite number above 0, got 'inf'"),
        (["--max-frames", "0"], "argument --max-frames: give a whole number from 1"),
        (["--max-new-tokens", "0"], "argument --max-new-tokens: give a whole number from 1"),
        (["--max-new-tokens", "-1"], "argument --max-new-tokens: give a whole number from 1"),
        (["--chunk-frames", "0"], "argument --chunk-frames: give a whole number from 1"),
        (["--chunk-frames", "-4"], "argument --chunk-frames: give a whole number from 1"),
        (["--budget", "-3"], "argument --budget: budget must be > 0, got '-3'"),
    ],
)
def test_cli_numbers_are_checked_as_they_are_parsed(video_file, capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        cli.main(["video-qa", str(video_file), "-q", "what ?", *args])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert err.startswith("mmretain video-qa: error:") and err.count("\n") == 1
    assert message in err and err.rstrip().endswith("(see mmretain video-qa --help)")


def test_cli_text_file_is_not_a_video(checkpoint, tmp_path, capsys):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    assert cli.main(["video-qa", str(bogus), "-q", "what ?", "--model", str(checkpoint)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_other_families_stream_like_one_shot(family, tmp_path, monkeypatch):
    from checkpoints import write_family

    checkpoint = write_family(family, tmp_path / family)
    vlm = load(checkpoint, policy="snapkv", budget=10_000)
    rng = np.random.default_rng(1)
    side = 56 if family == "qwen2_5_vl" else 28
    path = tmp_path / "clip.mp4"
    media.write_video(
        path, (rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(8)), 2
    )
    (answer,) = vlm.answer_video(
        path, "what is the colour ?", fps=2, chunk_frames=2, generation_config=WITH_LOGITS
    )
    frames = np.concatenate(list(media.Video(path, fps=2).chunks(100)))
    messages = [
        {
            "role": "user",
            "content": [{"type": "video"}, {"type": "text", "text": "what is the colour ?"}],
        }
    ]
    text = vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = vlm.processor(
        text=[text], videos=[frames], do_sample_frames=False, return_tensors="pt"
    )
    if family == "qwen2_5_vl":
        # Positions follow time: 2 frames per temporal patch sampled at 2 fps is 1 s per patch.
        # (Frames handed over without metadata would be taken as 24 fps.)
        inputs["second_per_grid_ts"] = torch.tensor([1.0])
    with torch.inference_mode():
        expected = vlm.model(**inputs).logits[:, -1]
    torch.testing.assert_close(answer.logits[0], expected)


def test_cli_zero_frame_video_exits_2(checkpoint, tmp_path, capsys):
    import av

    path = tmp_path / "empty.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 56, 56, "yuv420p"
        container.start_encoding()
    assert cli.main(["video-qa", str(path), "-q", "what ?", "--model", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "no frames" in err and err.count("\n") == 1


def test_cli_truncated_video_answers_from_decoded_frames_with_a_warning(
    checkpoint, tmp_path, capsys
):
    cut = cut_video(tmp_path, frames=40, kept=1 / 2, seed=2)
    code = cli.main(
        [
            "video-qa",
            str(cut),
            "-q",
            QUESTIONS[0],
            "--model",
            str(checkpoint),
            "--fps",
            "8",
            "--budget",
            "0.5",
            "--max-new-tokens",
            "2",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    frames = json.loads(captured.out)["answers"][0]["frames"]
    assert 0 < frames < 40
    assert captured.err.startswith("mmretain: warning: ")
    assert f"decoded {frames} of 40 planned frames" in captured.err


def test_cli_demo_writes_a_needle_video_and_answers_it(checkpoint, capsys):
    options = ["--model", str(checkpoint), "--max-new-tokens", "2", "--json"]
    assert cli.main(["video-qa", "--demo", *options]) == 0
    result = json.loads(capsys.readouterr().out)
    (answer,) = result["answers"]
    assert answer["question"].endswith("?") and result["expected"]
    assert answer["frames"] == 64 and answer["stats"]["kept_by_modality"]["video"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--demo", "clip.mp4"], "--demo makes its own video"),
        (["--demo", "-q", "what ?"], "--demo makes its own video"),
        (["clip.mp4"], "at least one -q"),
        ([], "give a video"),
    ],
)
def test_cli_video_qa_arguments_that_do_not_fit_exit_2(checkpoint, capsys, args, message):
    assert cli.main(["video-qa", *args, "--model", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmretain: error:") and message in err


def test_a_retain_user_streams_a_video_and_calls_generate(checkpoint, video_file):
    """The engine's public pieces — Session, stream_video, generate on the session's cache —
    give what answer_video gives."""
    vlm = load(checkpoint, policy="snapkv", budget=24, recent=4)
    (expected,) = vlm.answer_video(video_file, QUESTIONS[0], fps=4, max_new_tokens=4)
    prompt = vlm.run.adapter.video_prompt(vlm.processor, QUESTIONS[0])
    with torch.inference_mode(), mmretain.retain(vlm.model, vlm.config) as run:
        session = Session(run)
        video = media.Video(video_file, fps=4)
        frames = stream_video(session, vlm.processor, video, prompt.prefix)
        inputs = session.generate_inputs(torch.tensor([prompt.suffix]), prompt.question)
        out = vlm.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert frames == 20
    assert out[0, inputs["input_ids"].shape[1] :].tolist() == expected.tokens
    assert run.stats.entries_kept == expected.stats.entries_kept


def test_cli_damaged_video_is_one_line_with_no_libav_noise(tmp_path):
    """libav writes on stderr itself (through decord and PyAV): the command quiets it."""
    import subprocess
    import sys

    whole = tmp_path / "whole.mp4"
    media.write_video(whole, (np.zeros((56, 56, 3), dtype=np.uint8) for _ in range(20)), 4)
    whole = whole.read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(whole[: len(whole) // 2])
    done = subprocess.run(
        [sys.executable, "-m", "mmretain.cli", "video-qa", str(broken), "-q", "what ?"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"mmretain: error: no frame of {broken} could be decoded (5 planned); the file is "
        "damaged or cut short; re-encode or re-download it"
    ]
