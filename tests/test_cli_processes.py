"""Bad input to every command, run as a user runs it: a process of its own, exit 2 (130 for
Ctrl-C), at most two lines on stderr, and never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest


def mmretain(*argv: str | bytes, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmretain", *argv],
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def assert_one_error(done: subprocess.CompletedProcess, fragment: str) -> None:
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err
    assert fragment in err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, checkpoint, video_file, image_file):
    """Files a user might give: a gate-training folder with a malformed line, a dataset copy
    that does not parse, a GPT-2 checkpoint (an unsupported family)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "batches").mkdir()
    (root / "batches" / "b.jsonl").write_text('{"input_ids": [1, 2]}\n')
    data = root / "copy" / "data"
    data.mkdir(parents=True)
    (data / "validation-00000-of-00001.jsonl").write_text(json.dumps({"a": 1}) + '\n{"a": 2\n')
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(
        root / "gpt2"
    )
    return {
        "root": root,
        "model": str(checkpoint),
        "video": str(video_file),
        "image": str(image_file),
    }


@pytest.mark.parametrize(
    ("argv", "stdin", "fragment"),
    [
        # 1, 12: counts that cannot be
        ("video-qa {video} -q ? --max-new-tokens 0 --model {model}", b"", "--max-new-tokens"),
        ("video-qa {video} -q ? --chunk-frames -4 --model {model}", b"", "--chunk-frames"),
        # 2: bytes that are not UTF-8, in -q and on chat's stdin
        (["video-qa", "{video}", "-q", b"what \xff ?", "--model", "{model}"], b"", "not UTF-8"),
        ("chat --image {image} --model {model}", b"\xff\xfe\n", "not UTF-8"),
        # 3: a local dataset copy that does not parse
        (
            "eval --suite vqa --tasks vqav2={root}/copy --model {model} --out {root}/out --limit 1",
            b"",
            "cannot be read (JSON parse error",
        ),
        # 7, 9, 10, 11: train-gates checks before it loads anything; a missing directory is named
        (
            "train-gates --model testbed --data testbed --budget 0 --steps 1 --out {root}/g",
            b"",
            "budget",
        ),
        ("video-qa {video} -q ? --model /nonexistent/dir", b"", "no model directory"),
        (
            "train-gates --model {root}/gpt2 --data testbed --budget 8 --steps 1 --out {root}/g",
            b"",
            "is not supported",
        ),
        (
            "train-gates --model testbed --data {root}/batches --budget 8 --steps 1 --out {root}/g",
            b"",
            "b.jsonl:1 lacks ['target_mask']",
        ),
        # 13: a video of no frames
        ("testbed make-video {root}/x.mp4 --frames 0", b"", "give a whole number from 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_traceback(inputs, argv, stdin, fragment):
    argv = argv.split() if isinstance(argv, str) else argv
    argv = [a.format(**inputs) if isinstance(a, str) else a for a in argv]
    assert_one_error(mmretain(*argv, stdin=stdin), fragment)


def test_ctrl_c_in_chat_is_one_line_and_exit_130(inputs):
    """4: Ctrl-C while chat waits for a message."""
    chat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mmretain",
            "chat",
            "--image",
            inputs["image"],
            "--model",
            inputs["model"],
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    banner = chat.stderr.readline().decode()  # printed once the model is loaded
    assert banner.startswith("policy ")
    chat.send_signal(signal.SIGINT)
    _, err = chat.communicate(timeout=60)
    err = err.decode()
    assert chat.returncode == 130
    assert err.splitlines()[-1] == "mmretain: interrupted" and "Traceback" not in err
