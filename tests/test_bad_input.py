"""Bad input, run as a user runs it: bad training data, checkpoints, arguments and budgets,
CLIP folders that would reach a hub, two evaluations on one folder, Ctrl-C, the lmms-eval
plugin's model_args. Each ends in exit 2 (130 for Ctrl-C) and one stderr line, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mmretain
from mmretain import cli
from mmretain.eval import cli as eval_cli
from mmretain.eval.records import read_rows
from mmretain.gates import cli as gates_cli
from mmretain.gates.checkpoint import CHECKPOINTS, OPTIMIZER_FILE, STATE_FILE

VQAV2 = Path(__file__).parent / "data" / "eval" / "vqav2"
VOCAB = 128  # of the tiny Llama the gates train for (conftest)


def one_line(code: int, err: str, fragment: str, expected: int = 2) -> None:
    assert code == expected, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert fragment in err, err


def run_main(main, argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)``'s exit code (argparse's too) and its stderr."""
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def process(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout)


# -- train-gates ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, llama) -> Path:
    directory = tmp_path_factory.mktemp("llama")
    llama.model.save_pretrained(directory)
    return directory


def gates_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    args = ["--model", str(model), "--data", str(data), "--budget", "6", "--steps", "1"]
    return [*args, "--width", "8", "--out", str(out), *extra]


def jsonl(directory: Path, *samples: dict) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "b.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return directory


GOOD = {"input_ids": [5, 6, 7, 8], "target_mask": [0, 0, 1, 1]}


@pytest.mark.parametrize(
    ("sample", "fragment"),
    [
        ({**GOOD, "input_ids": [5, 6, 7, VOCAB]}, "outside the model's vocabulary (0 to 127)"),
        ({**GOOD, "input_ids": [5, -1, 7, 8]}, "token ids from -1 to 8, outside"),
        ({**GOOD, "input_ids": [5.0, 6.5, 7.0, 8.0]}, "input_ids are torch.float32, not integers"),
        (
            {"input_ids": [[5, 6], [7, 8]], "target_mask": [[0, 1], [0, 1]]},
            "input_ids (1, 2, 2) must be [batch, tokens]",
        ),
    ],
)
def test_train_gates_checks_jsonl_ids(tmp_path, llama_dir, capsys, sample, fragment):
    data = jsonl(tmp_path / "data", GOOD, sample)
    argv = gates_args(llama_dir, data, tmp_path / "out")
    code, err = run_main(gates_cli.main, argv, capsys)
    one_line(code, err, fragment)
    assert "b.jsonl:2" in err
    assert not (tmp_path / "out").exists()  # nothing trained


def safetensors_batch(directory: Path, **tensors: torch.Tensor) -> Path:
    directory.mkdir(exist_ok=True)
    save_file(tensors, directory / "a.safetensors")
    return directory


IDS = torch.tensor([[5, 6, 7, 8]])
MASK = torch.tensor([[0, 0, 1, 1]])


@pytest.mark.parametrize(
    ("batch", "fragment"),
    [
        ({"input_ids": torch.tensor([[5, 6, VOCAB]])}, "lacks ['target_mask']"),
        (
            {"input_ids": torch.tensor([[5, 6, VOCAB]]), "target_mask": torch.tensor([[0, 1, 1]])},
            "training batch 0 holds token ids from 5 to 128, outside",
        ),
        ([5, 6, 7], "training batch 0 is a list, not a dict of tensors"),
    ],
)
def test_train_gates_in_code_checks_each_batch_as_the_command_does(
    llama, tmp_path, batch, fragment
):
    from mmretain.errors import GatesTrainingError
    from mmretain.gates import train_gates

    with pytest.raises(GatesTrainingError) as error:
        train_gates(
            llama.model,
            [batch],
            budget=6,
            tied=True,
            steps=1,
            out=tmp_path,
            width=8,
            progress=False,
        )
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        ({"input_ids": IDS.float(), "target_mask": MASK}, "input_ids are torch.float32"),
        ({"input_ids": IDS[0], "target_mask": MASK[0]}, "input_ids (4,) must be [batch, tokens]"),
        (
            {"input_ids": IDS[None], "target_mask": MASK[None]},
            "input_ids (1, 1, 4) must be [batch, tokens]",
        ),
        (
            {"input_ids": IDS, "target_mask": MASK, "pixel_values": torch.zeros(16, 1176)},
            "pixel_values are flattened patches (16, 1176) without image_grid_thw",
        ),
        (
            {
                "input_ids": IDS,
                "target_mask": MASK,
                "pixel_values": torch.zeros(16, 1176),
                "image_grid_thw": torch.tensor([[1, 2, 2]]),
            },
            "image_grid_thw (1, 3) does not describe its 16 patches",
        ),
        ({"input_ids": IDS + VOCAB, "target_mask": MASK}, "outside the model's vocabulary"),
    ],
)
def test_train_gates_checks_safetensors_batches(tmp_path, llama_dir, capsys, tensors, fragment):
    data = safetensors_batch(tmp_path / "data", **tensors)
    code, err = run_main(gates_cli.main, gates_args(llama_dir, data, tmp_path / "out"), capsys)
    one_line(code, err, fragment)
    assert "a.safetensors" in err


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--budget", "99999999999999999999"], "argument --budget: give a whole number from 1"),
        (["--budget", "0"], "argument --budget"),
        (["--width", "-5"], "argument --width"),
        (["--width", "0"], "argument --width"),
        (["--steps", "0"], "argument --steps"),
        (["--steps", "99999999999999999999"], "argument --steps"),
        (["--lr", "nan"], "argument --lr: give a finite number above 0"),
        (["--floor", "1"], "argument --floor: give a finite number at least 0 and below 1"),
    ],
)
def test_train_gates_checks_numbers_as_it_parses_them(tmp_path, capsys, flags, fragment):
    argv = gates_args(Path("unused"), Path("unused"), tmp_path / "out", *flags)
    code, err = run_main(gates_cli.main, argv, capsys)
    one_line(code, err, fragment)
    assert "(see mmretain train-gates --help)" in err


def test_train_gates_refuses_an_output_that_is_a_file_before_loading(tmp_path, capsys):
    (tmp_path / "out").write_text("")
    argv = gates_args(Path("unused"), Path("unused"), tmp_path / "out")
    code, err = run_main(gates_cli.main, argv, capsys)
    one_line(code, err, f"the output {tmp_path / 'out'} is a file")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llama_dir) -> tuple[Path, list[str]]:
    """A run of one step with its checkpoint, and the arguments that resume it."""
    root = tmp_path_factory.mktemp("trained")
    data = jsonl(root / "data", GOOD, GOOD)
    out = root / "gates"
    argv = gates_args(llama_dir, data, out)
    assert gates_cli.main(argv) == 0
    return out, [a if a != "1" else "2" for a in argv] + ["--resume"]  # --steps 2


def damaged_copy(trained, tmp_path, damage) -> tuple[list[str], Path]:
    source, argv = trained
    out = tmp_path / "gates"
    shutil.copytree(source, out)
    checkpoint = out / CHECKPOINTS / "step-000001"
    damage(checkpoint)
    return [str(out) if a == str(source) else a for a in argv], checkpoint


def truncate(name: str):
    def damage(checkpoint: Path) -> None:
        path = checkpoint / name
        path.write_bytes(path.read_bytes()[:100])

    return damage


def edit_state(change):
    def damage(checkpoint: Path) -> None:
        path = checkpoint / STATE_FILE
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))

    return damage


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (truncate(OPTIMIZER_FILE), "optimizer.safetensors is cut short or damaged"),
        (truncate("retention_gates.safetensors"), "retention_gates.safetensors is cut short"),
        (
            edit_state(lambda r: r["optimizer"].update(param_groups=[{"params": "x"}])),
            "the optimizer state in trainer_state.json cannot be read",
        ),
        (edit_state(lambda r: r.pop("step")), "trainer_state.json cannot be read ('step')"),
        (truncate(STATE_FILE), "trainer_state.json cannot be read"),
    ],
)
def test_resume_names_the_damaged_file(trained, tmp_path, capsys, damage, fragment):
    argv, checkpoint = damaged_copy(trained, tmp_path, damage)
    code, err = run_main(gates_cli.main, argv, capsys)
    one_line(code, err, fragment)
    assert f"cannot resume from {checkpoint}" in err and "without --resume" in err


def test_an_undamaged_checkpoint_still_resumes(trained, tmp_path):
    argv, _ = damaged_copy(trained, tmp_path, lambda checkpoint: None)
    assert gates_cli.main(argv) == 0


# -- numbers and argument errors -----------------------------------------------------------------
@pytest.mark.parametrize("prior", ["inf", "1e308", "nan", "-1"])
def test_prior_is_checked_as_it_is_parsed(capsys, prior):
    argv = ["video-qa", "--demo", "--relevance", "clip", "--prior", prior]
    code, err = run_main(cli.main, argv, capsys)
    one_line(code, err, "argument --prior: give a finite number at least 0 and at most 1000")


def test_relevance_refuses_an_infinite_prior():
    from mmretain.errors import ConfigError
    from mmretain.relevance import Relevance

    with pytest.raises(ConfigError, match="<= 1000"):
        Relevance(prior=float("inf"))


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["-m", "mmretain", "video-qa", "v.mp4", "-q", "?", "--fps", "abc"], "argument --fps"),
        (["-m", "mmretain.gates"], "the following arguments are required: --model"),
        (["-m", "mmretain", "eval", "--out", "x", "--limit", "0"], "argument --limit"),
    ],
)
def test_argument_errors_are_one_line_with_a_pointer_to_help(argv, fragment):
    done = process(*argv)
    one_line(done.returncode, done.stderr, fragment)
    assert done.stderr.rstrip().endswith("--help)")


def test_ctrl_c_while_the_libraries_import_exits_130_in_one_line(monkeypatch, capsys):
    """Before the command's action: setting up transformers and the decoders takes seconds."""
    from mmretain import media

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(media, "quiet_decoders", interrupted)
    code, err = run_main(cli.main, ["video-qa", "--demo"], capsys)
    one_line(code, err, "mmretain: interrupted", expected=130)


# -- one writer per evaluation folder ------------------------------------------------------------
def eval_argv(checkpoint, out) -> list[str]:
    argv = ["--suite", "vqa", "--tasks", f"vqav2={VQAV2}", "--model", str(checkpoint)]
    return [*argv, "--policies", "full", "--limit", "2", "--pictures", "0", "--out", str(out)]


def test_two_evaluations_on_one_folder_score_each_sample_once(checkpoint, tmp_path):
    command = [sys.executable, "-m", "mmretain", "eval", *eval_argv(checkpoint, tmp_path)]
    runs = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    done = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    rows = list(read_rows(tmp_path / "rows" / "vqav2" / "full.jsonl"))
    assert sorted(r["index"] for r in rows) == sorted({r["index"] for r in rows})
    assert len(rows) == 2
    assert 0 in [code for code, _ in done]
    for code, err in done:
        if code:
            one_line(code, err, f"another run is writing to {tmp_path} now")


def test_a_lock_held_by_a_running_process_refuses_and_a_killed_ones_is_recovered(
    checkpoint, tmp_path, capsys
):
    hold = (
        "import sys, time; from pathlib import Path; from mmretain.eval.lock import output_lock\n"
        "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(300)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        code, err = run_main(eval_cli.main, eval_argv(checkpoint, tmp_path), capsys)
        one_line(code, err, "another run is writing to")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert eval_cli.main(eval_argv(checkpoint, tmp_path)) == 0  # the dead run's lock is free


def test_eval_out_that_is_a_file_is_one_line(checkpoint, tmp_path, capsys):
    (tmp_path / "out").write_text("")
    code, err = run_main(eval_cli.main, eval_argv(checkpoint, tmp_path / "out"), capsys)
    one_line(code, err, "is a file; give a directory")


# -- CLIP loads offline, and only weights that fit -----------------------------------------------
@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every connection attempt, refused and recorded."""
    attempts = []

    def connect(self, address):
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or [])
    return attempts


def clip_folder(tmp_path: Path, change=None) -> Path:
    """A copy of the test-bed CLIP's folder, its config changed by ``change``."""
    from mmretain.testbed import clip_path

    folder = tmp_path / "clip"
    shutil.copytree(clip_path(), folder)
    if change:
        path = folder / "open_clip_config.json"
        config = json.loads(path.read_text())
        change(config["model_cfg"])
        path.write_text(json.dumps(config))
    return folder


def video_qa_clip(*flags: str) -> list[str]:
    return ["video-qa", "--demo", "--relevance", "clip", "--max-new-tokens", "2", *flags]


def test_a_clip_folder_naming_a_hub_text_model_is_refused_without_the_network(
    tmp_path, capsys, no_network
):
    folder = clip_folder(tmp_path, lambda cfg: cfg["text_cfg"].update(hf_model_name="roberta-base"))
    started = time.monotonic()
    code, err = run_main(cli.main, video_qa_clip("--clip-model", str(folder)), capsys)
    one_line(code, err, "sets text_cfg.hf_model_name = 'roberta-base'")
    assert no_network == [] and time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("roberta-ViT-B-32", "text_cfg.hf_model_name = 'roberta-base'"),
        ("ViT-B-16-SigLIP", "text_cfg.hf_tokenizer_name = 'timm/ViT-B-16-SigLIP'"),
        ("hf-hub:timm/ViT-B-16-SigLIP", "is a hub name"),
    ],
)
def test_hub_architectures_are_refused_without_the_network(no_network, model, fragment):
    from mmretain.errors import ConfigError
    from mmretain.relevance import load_clip
    from mmretain.testbed import clip_path

    with pytest.raises(ConfigError, match="hub") as error:
        load_clip(model, clip_path() / "open_clip_model.safetensors")
    assert fragment in str(error.value) and no_network == []


def test_weights_that_do_not_fit_the_architecture_are_one_line(tmp_path, capsys):
    folder = clip_folder(tmp_path, lambda cfg: cfg["vision_cfg"].update(width=128))
    code, err = run_main(cli.main, video_qa_clip("--clip-model", str(folder)), capsys)
    one_line(code, err, "do not fit open_clip model")


def test_a_pickle_named_safetensors_is_refused_unread(tmp_path, capsys, monkeypatch):
    folder = clip_folder(tmp_path)
    torch.save({"x": torch.zeros(1)}, folder / "open_clip_model.safetensors")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was unpickled"))
    code, err = run_main(cli.main, video_qa_clip("--clip-model", str(folder)), capsys)
    one_line(code, err, "is not a safetensors file")


# -- the lmms-eval plugin checks its model_args when it is built ---------------------------------
def build_plugin(capsys, **model_args) -> tuple[int, str]:
    """The plugin built as lmms-eval builds it: its exit code and stderr when it refuses."""
    pytest.importorskip("lmms_eval")
    from mmretain.eval.lmms_model import RetainedLMM

    with pytest.raises(SystemExit) as done:
        RetainedLMM(**model_args)
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"fps": "abc"}, "model_args fps: give a finite number above 0, got 'abc'"),
        ({"max_frames": -4}, "model_args max_frames: give a whole number from 1"),
        ({"chunk_frames": 0}, "model_args chunk_frames: give a whole number from 1"),
    ],
)
def test_the_plugin_checks_frame_args_before_loading(capsys, args, fragment):
    code, err = build_plugin(capsys, pretrained="/no/such/model", **args)
    one_line(code, err, f"mmretain: error: {fragment}")


@pytest.mark.parametrize("chunk_frames", [0, -3, 2.5])
def test_answer_video_refuses_a_chunk_of_no_frames(chunk_frames, tmp_path):
    from mmretain.errors import FrameSamplingError
    from mmretain.testbed.video_file import write_needle_video

    info = write_needle_video(tmp_path / "needle.mp4", frames=8, depth=0.5, seed=0)
    vlm = mmretain.load("testbed")
    with pytest.raises(FrameSamplingError, match="chunk_frames must be"):
        vlm.answer_video(tmp_path / "needle.mp4", info["question"], chunk_frames=chunk_frames)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"budget": "abc"}, "budget could not be read, got 'abc'"),
        ({"policy": "nope"}, "nope"),
        ({"pretrained": "/nonexistent"}, "/nonexistent"),
    ],
)
def test_the_plugins_load_errors_are_one_line_and_exit_2(capsys, args, fragment):
    code, err = build_plugin(capsys, **args)
    one_line(code, err, fragment)
    assert err.startswith("mmretain: error: ")


def test_lmms_eval_exits_2_in_one_line_on_bad_model_args(tmp_path):
    """lmms-eval catches what the model raises while it is built, prints a traceback and exits
    0: the plugin's argument errors must still reach the user."""
    pytest.importorskip("lmms_eval")
    command = [sys.executable, "-m", "lmms_eval", "--model", "mmretain", "--tasks", "mme"]
    command += ["--model_args", "pretrained=testbed,budgte=0.1", "--batch_size", "1"]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    one_line(done.returncode, done.stderr, "mmretain: error: unknown model_args budgte")


# -- every number given to `mmretain testbed` is checked as it is parsed --------------------------
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["make-video", "v.mp4", "--frames", "abc"], "argument --frames: give a whole number"),
        (["make-video", "v.mp4", "--needle-depth", "2"], "argument --needle-depth: give a finite"),
        (["make-video", "v.mp4", "--fps", "nan"], "argument --fps: give a finite number above 0"),
        (["make-video", "v.mp4", "--seed", "-1"], "argument --seed: give a whole number from 0"),
        (["train", "--out", "m", "--steps", "0"], "argument --steps: give a whole number from 1"),
        (["train", "--out", "m", "--threads", "1.5"], "argument --threads"),
        (["train-clip", "--out", "m", "--minutes", "-1"], "argument --minutes"),
        (["evaluate", "--threads", "0"], "argument --threads: give a whole number from 1"),
    ],
)
def test_testbed_numbers_are_checked_as_they_are_parsed(
    tmp_path, monkeypatch, capsys, argv, fragment
):
    from mmretain.testbed import cli as testbed_cli

    monkeypatch.chdir(tmp_path)
    code, err = run_main(testbed_cli.main, argv, capsys)
    one_line(code, err, fragment)
    assert err.rstrip().endswith(f"(see mmretain testbed {argv[0]} --help)")
    assert not list(tmp_path.iterdir())  # nothing written


# -- --budget is read as it is parsed ------------------------------------------------------------
@pytest.mark.parametrize(
    ("budget", "fragment"),
    [
        ("lots", "budget could not be read, got 'lots'"),
        ("0", "budget must be > 0, got '0'"),
        ("-1", "budget must be > 0, got '-1'"),
        ("99999999999999999999", "budget of 99999999999999999999 tokens is more than 2147483647"),
    ],
)
@pytest.mark.parametrize(
    "command", [["video-qa", "no/such.mp4", "-q", "?"], ["chat", "--image", "no/such.png"]]
)
def test_budget_is_checked_as_it_is_parsed(capsys, command, budget, fragment):
    """The video and image do not exist: a budget read later would fail on them instead."""
    code, err = run_main(cli.main, [*command, "--budget", budget], capsys)
    one_line(code, err, f"argument --budget: {fragment}")
    assert err.rstrip().endswith(f"(see mmretain {command[0]} --help)")


def test_ctrl_c_while_arguments_are_parsed_exits_130_in_one_line(monkeypatch, capsys):
    """Reading --budget imports torch, a second before the command can catch Ctrl-C."""
    from mmretain.budget import Budget

    def interrupted(value):
        raise KeyboardInterrupt

    monkeypatch.setattr(Budget, "parse", interrupted)
    code, err = run_main(cli.main, ["video-qa", "v.mp4", "-q", "?"], capsys)
    one_line(code, err, "mmretain video-qa: interrupted", expected=130)


# -- frames of a degenerate size -----------------------------------------------------------------
def narrow_video(path: Path, width: int, height: int) -> Path:
    from mmretain.media import write_video

    rng = np.random.default_rng(0)
    write_video(path, (rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(4)), 1)
    return path


@pytest.mark.parametrize(("width", "height"), [(2, 500), (16, 64), (48, 64)])
def test_frames_of_any_width_decode_to_their_size(tmp_path, width, height):
    """decord pads the rows of some widths and returns the padding as channels."""
    from mmretain.media import Video

    path = narrow_video(tmp_path / "narrow.mp4", width, height)
    (frames,) = Video(path).chunks(16)
    (expected,) = Video(path, backend="pyav").chunks(16)
    assert frames.shape == (4, height, width, 3)
    np.testing.assert_array_equal(frames, expected)


def test_a_video_too_narrow_for_the_processor_is_one_line(tmp_path, capsys):
    path = narrow_video(tmp_path / "narrow.mp4", 2, 500)
    code, err = run_main(cli.main, ["video-qa", str(path), "-q", "what?"], capsys)
    one_line(code, err, f"{path}: frames are 2x500 pixels, the long side 250 times the short one")
    assert "takes at most 200 times, so pad the short side to at least 3 pixels" in err


def test_a_narrow_video_is_answered_by_a_processor_that_takes_it(tmp_path, capsys):
    path = narrow_video(tmp_path / "narrow.mp4", 2, 500)
    argv = ["video-qa", str(path), "-q", "what?", "--model", "testbed-llava", "--json"]
    code, err = run_main(cli.main, argv, capsys)
    assert code == 0, err


def test_an_image_too_narrow_for_the_processor_is_refused_with_the_fix(tmp_path):
    from PIL import Image

    from mmretain.errors import MediaError

    path = tmp_path / "narrow.png"
    Image.new("RGB", (500, 2), "white").save(path)
    vlm = mmretain.load("testbed")
    image = {"type": "image", "image": str(path)}
    with pytest.raises(MediaError, match=r"500x2 pixels.*pad the short side"):
        vlm.chat([{"role": "user", "content": [image, {"type": "text", "text": "what ?"}]}], 1)


def test_a_byte_budget_below_one_entry_per_head_is_refused_with_the_minimum(capsys):
    """Tokens and fractions keep at least one position per layer and head; bytes below that
    would leave attention nothing to read, so the answer was noise."""
    assert cli.main(["video-qa", "--demo", "--budget", "1B"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fewer than one per layer and KV head" in err
    minimum = int(err.rsplit("give at least ", 1)[1].split()[0])
    assert cli.main(["video-qa", "--demo", "--budget", f"{minimum}B"]) == 0
