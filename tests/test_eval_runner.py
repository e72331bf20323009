"""The evaluation runner, offline, on small local datasets in their hub layout
(tests/data/eval, written by build.py there) and a tiny random Qwen2-VL: rows, reports,
resuming after kill -9, sharding, and bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from mmretain.eval import cli
from mmretain.eval.grid import Cell, RunSettings, cells
from mmretain.eval.records import CellFiles, read_rows
from mmretain.eval.runner import Locations, Runner, Shard, evaluate
from mmretain.eval.tasks import select_tasks

DATA = Path(__file__).parent / "data" / "eval"
VQAV2 = DATA / "vqav2"
VIDEOMME = DATA / "videomme"


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Datasets the tests write are prepared in a temporary cache, not the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("cache"))


def run_vqa(checkpoint, out, *extra, tasks=f"vqav2={VQAV2}"):
    args = ["--suite", "vqa", "--tasks", tasks, "--model", str(checkpoint), "--out", str(out)]
    return cli.main([*args, "--policies", "full,snapkv", "--budgets", "0.25", *extra])


def rows_of(out, task, cell):
    return list(read_rows(out / "rows" / task / f"{cell}.jsonl"))


def test_vqa_task_runs_every_cell_on_the_same_samples(checkpoint, tmp_path, capsys):
    assert run_vqa(checkpoint, tmp_path, "--max-new-tokens", "3") == 0
    full, snapkv = rows_of(tmp_path, "vqav2", "full"), rows_of(tmp_path, "vqav2", "snapkv@0.25")
    assert [r["id"] for r in full] == [r["id"] for r in snapkv] and len(full) == 6
    row = snapkv[0]
    assert set(row) >= {"prediction", "score", "tokens_seen", "tokens_kept", "kv_bytes", "seconds"}
    assert row["tokens_seen"]["image"] == 16  # a 112 x 112 image: 4 x 4 merged patches
    assert row["tokens_kept"]["image"] < 16  # snapkv at 25% dropped some of them
    assert all(r["kv_bytes"] == r["kv_full_bytes"] for r in full)  # the full cache keeps all
    assert all(r["kv_bytes"] < r["kv_full_bytes"] for r in snapkv)
    report = (tmp_path / "report.md").read_text()
    assert "| vqav2 | VQA accuracy | snapkv | 0.25 |" in report
    assert (tmp_path / "vqa_accuracy_vs_budget.png").stat().st_size > 0
    assert (tmp_path / "pictures" / "vqav2" / "snapkv@0.25" / "0.png").is_file()
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["cell"] for r in results} == {"full", "snapkv@0.25"}
    assert "wrote" in capsys.readouterr().out


def test_video_task_reports_per_duration(checkpoint, tmp_path):
    code = cli.main(
        [
            "--suite",
            "video",
            "--tasks",
            f"videomme_sub={VIDEOMME}",
            "--model",
            str(checkpoint),
            "--policies",
            "full,tova",
            "--budgets",
            "0.3",
            "--fps",
            "4",
            "--chunk-frames",
            "4",
            "--max-new-tokens",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    rows = rows_of(tmp_path, "videomme_sub", "tova@0.3")
    assert [r["id"] for r in rows] == ["001-1", "001-2", "002-1"]
    assert rows[0]["tokens_seen"]["video"] == 12 // 2 * 4  # 12 frames, 2 fused per 4 tokens
    assert all("parsed" in r for r in rows)  # letters read or recorded as unparsed
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"duration=short", "duration=long"} <= set(results[0]["summary"])
    assert (tmp_path / "pictures" / "videomme_sub" / "tova@0.3" / "0.png").is_file()


def test_kill_9_then_rerun_recomputes_nothing_and_loses_nothing(checkpoint, tmp_path):
    out = tmp_path / "run"
    argv = ["--suite", "vqa", "--tasks", f"vqav2={VQAV2}", "--model", str(checkpoint)]
    argv += ["--policies", "full,snapkv", "--budgets", "0.25", "--max-new-tokens", "16"]
    argv += ["--pictures", "0", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "mmretain", "eval", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    files = [out / "rows" / "vqav2" / f"{cell}.jsonl" for cell in ("full", "snapkv@0.25")]
    deadline = time.monotonic() + 120
    while sum(len(list(read_rows(f))) for f in files) < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {f: f.read_bytes() if f.exists() else b"" for f in files}
    kept = sum(len(list(read_rows(f))) for f in files)
    assert 3 <= kept < 12
    # A torn last line, as a crash mid-write leaves it: the sample it held runs again.
    torn = next(f for f in files if f.exists() and before[f])
    with torn.open("ab") as handle:
        handle.write(b'{"index": 5, "predic')

    predicted = []
    original = Runner._predict

    def counting(self, vlm, sample, task):
        predicted.append(sample.index)
        return original(self, vlm, sample, task)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Runner, "_predict", counting)
        assert cli.main(argv) == 0
    assert len(predicted) == 12 - kept  # only the samples without a row ran
    for f in files:
        lines = f.read_bytes()
        assert lines.startswith(before[f].split(b'{"index": 5, "predic')[0])  # nothing rewritten
        rows = [json.loads(line) for line in lines.splitlines()]  # every line whole
        assert sorted(r["index"] for r in rows) == list(range(6))  # each sample exactly once


def test_sharded_processes_split_the_samples_and_the_main_one_merges(checkpoint, tmp_path):
    settings = RunSettings(model=str(checkpoint), max_new_tokens=2)
    tasks = select_tasks("vqa", ["vqav2"])
    ran: dict[int, list[int]] = {0: [], 1: []}
    original = Runner._predict

    def recording(self, vlm, sample, task):
        ran[self.shard.rank].append(sample.index)
        return original(self, vlm, sample, task)

    def run(rank):
        return evaluate(
            tmp_path,
            tasks,
            [Cell("full", None)],
            settings,
            locations=Locations({"vqav2": VQAV2}),
            shard=Shard(rank, 2),
            pictures=0,
            progress=False,
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Runner, "_predict", recording)
        assert run(1) is None  # not the main process: it leaves its part file
        parts = CellFiles(tmp_path / "rows" / "vqav2", "full").parts()
        assert [p.name for p in parts] == ["full.part1of2.jsonl"]
        results = run(0)  # the main process: runs its share, then merges
    assert ran == {0: [0, 2, 4], 1: [1, 3, 5]}
    assert [r["index"] for r in rows_of(tmp_path, "vqav2", "full")] == list(range(6))
    assert not CellFiles(tmp_path / "rows" / "vqav2", "full").parts()
    assert results[0].samples == 6


def test_a_malformed_sample_is_an_error_row_and_the_run_goes_on(checkpoint, tmp_path):
    good = datasets.load_dataset(str(VQAV2), split="validation")
    rows = good.cast_column("image", datasets.Image(decode=False)).to_list()[:3]
    rows[1]["image"] = {"bytes": b"not a png", "path": "broken.png"}  # undecodable
    rows[2]["answers"] = []  # no reference answer
    bad = tmp_path / "bad_vqav2"
    (bad / "data").mkdir(parents=True)
    features = good.features
    datasets.Dataset.from_list(rows, features=features).to_parquet(
        bad / "data" / "validation-00000-of-00001.parquet"
    )
    out = tmp_path / "out"
    assert run_vqa(checkpoint, out, "--max-new-tokens", "2", tasks=f"vqav2={bad}") == 0
    rows = rows_of(out, "vqav2", "snapkv@0.25")
    assert "error" not in rows[0]
    assert "error" in rows[1] and rows[1]["answer"] is not None  # scored as wrong
    assert "holds no reference answer" in rows[2]["error"] and rows[2]["answer"] is None
    result = json.loads((out / "results.json").read_text())[0]
    assert (result["samples"], result["errors"]) == (2, 2)


def test_rerun_with_other_settings_is_refused(checkpoint, tmp_path, capsys):
    assert run_vqa(checkpoint, tmp_path, "--max-new-tokens", "2", "--limit", "2") == 0
    assert run_vqa(checkpoint, tmp_path, "--max-new-tokens", "3", "--limit", "2") == 2
    err = capsys.readouterr().err
    assert "max_new_tokens: 2 there, 3 now" in err and "another --out" in err


def test_limit_spreads_the_same_samples_over_the_split(checkpoint, tmp_path):
    assert run_vqa(checkpoint, tmp_path, "--max-new-tokens", "2", "--limit", "3") == 0
    assert [r["index"] for r in rows_of(tmp_path, "vqav2", "full")] == [1, 3, 5]
    assert [r["index"] for r in rows_of(tmp_path, "vqav2", "snapkv@0.25")] == [1, 3, 5]


def test_a_smaller_limit_into_a_fuller_folder_reports_its_own_samples(checkpoint, tmp_path):
    assert run_vqa(checkpoint, tmp_path, "--max-new-tokens", "2") == 0
    assert run_vqa(checkpoint, tmp_path, "--max-new-tokens", "2", "--limit", "2") == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["cell"]: r["samples"] + r["errors"] for r in results} == {"full": 2, "snapkv@0.25": 2}
    assert len(rows_of(tmp_path, "vqav2", "full")) == 6  # nothing on disk is lost


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "nope"], "no task 'nope' in the vqa suite; its tasks: vqav2, gqa"),
        (["--tasks", "vqav2=/no/such/dir"], "no dataset for task 'vqav2' at /no/such/dir"),
        (["--tasks", "vqav2", "--data-dir", "/no/such"], "looked for /no/such/VQAv2 and"),
        (["--tasks", f"vqav2={VQAV2}", "--policies", "nope"], "registered policies"),
        (["--tasks", f"vqav2={VQAV2}", "--budgets", "2.5"], "budget"),
        (["--report-only"], "no rows under"),
    ],
)
def test_bad_input_is_one_line_naming_what_is_missing(checkpoint, tmp_path, capsys, args, message):
    argv = ["--suite", "vqa", "--model", str(checkpoint), "--out", str(tmp_path), *args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmretain eval: error:") and err.count("\n") == 1
    assert message in err


def test_a_missing_video_is_named_before_any_sample_runs(checkpoint, tmp_path, capsys):
    copy = tmp_path / "videomme"
    shutil.copytree(VIDEOMME, copy)
    (copy / "data" / "tinyvid0002.mp4").unlink()
    argv = ["--suite", "video", "--tasks", f"videomme={copy}", "--model", str(checkpoint)]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"1 of 3 videos of task 'videomme' not found under {copy}" in err
    assert str(copy / "data" / "tinyvid0002.mp4") in err
    assert not (tmp_path / "out" / "rows").exists()


def test_the_grid_has_the_full_cache_once_and_one_spelling_per_budget():
    settings = RunSettings(model="unused")
    grid = cells(["full", "snapkv", "full"], ["0.10", "0.1", "512", "64MiB"], settings)
    assert [c.name for c in grid] == ["full", "snapkv@0.1", "snapkv@512", "snapkv@64MiB"]
    with pytest.raises(ValueError, match="at least one budget"):
        cells(["snapkv"], [], settings)


def test_chunk_tokens_bounds_the_peak_while_the_prompt_is_read(checkpoint, tmp_path):
    """With --chunk-tokens the prompt is prefilled in pieces and evicted after each, so the
    cache never holds the whole image at once."""
    peaks = {}
    for chunk in (None, 8):
        settings = RunSettings(
            model=str(checkpoint), max_new_tokens=1, sink=0, recent=0, chunk_tokens=chunk
        )
        out = tmp_path / str(chunk)
        evaluate(
            out,
            select_tasks("vqa", ["vqav2"]),
            [Cell("snapkv", "0.25")],
            settings,
            limit=2,
            locations=Locations({"vqav2": VQAV2}),
            pictures=0,
            progress=False,
        )
        rows = rows_of(out, "vqav2", "snapkv@0.25")
        assert all("error" not in row for row in rows)
        peaks[chunk] = max(row["kv_peak_bytes"] for row in rows)
        full = max(row["kv_full_bytes"] for row in rows)
    assert peaks[8] < peaks[None] <= full


def test_a_conversation_is_fed_turn_by_turn(tmp_path, monkeypatch):
    """Earlier turns are prefilled and answered before the next, as in a chat, so they can be
    evicted before the question in the last turn arrives."""
    from checkpoints import write_testbed

    from mmretain.api import RetainedVLM

    model = write_testbed(tmp_path / "model")
    seen: list[list[str]] = []
    chat = RetainedVLM.chat

    def recording(self, messages, max_new_tokens=128):
        seen.append([m["role"] for m in messages])
        return chat(self, messages, max_new_tokens)

    monkeypatch.setattr(RetainedVLM, "chat", recording)
    settings = RunSettings(model=str(model), max_new_tokens=1, sink=0, recent=0)
    evaluate(
        tmp_path / "out",
        select_tasks("testbed", ["dialogue"]),
        [Cell("snapkv", "0.5")],
        settings,
        limit=3,
        pictures=0,
        progress=False,
    )
    assert [roles.count("user") for roles in seen] == [1, 2, 3] * 3
    assert seen[0] == ["user"] and seen[-1][-1] == "user"
    rows = rows_of(tmp_path / "out", "dialogue", "snapkv@0.5")
    assert len(rows) == 3
    for row in rows:
        assert "error" not in row
        assert row["restarts"] == 0  # each turn went on from the cache the turn before left


def test_a_folder_whose_fractions_meant_tokens_seen_is_not_resumed(tmp_path):
    from mmretain.errors import RunMismatchError
    from mmretain.eval.runner import check_settings

    settings = RunSettings(model="testbed")
    older = {k: v for k, v in dataclasses.asdict(settings).items() if k != "fraction_of"}
    (tmp_path / "run.json").write_text(json.dumps({"settings": older}))
    with pytest.raises(RunMismatchError, match="fraction_of: None there, 'prompt' now"):
        check_settings(tmp_path, settings, Shard())
    check_settings(tmp_path / "new", settings, Shard())  # a new folder records it
    recorded = json.loads((tmp_path / "new" / "run.json").read_text())["settings"]
    assert recorded["fraction_of"] == "prompt"


def test_a_run_whose_first_samples_all_fail_stops_and_keeps_no_rows(
    checkpoint, tmp_path, monkeypatch, capsys
):
    def broken(self, vlm, sample, task):
        raise ValueError("boom: a bug in the run, not in the samples")

    monkeypatch.setattr(Runner, "_predict", broken)
    assert run_vqa(checkpoint, tmp_path, "--max-new-tokens", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the first 6 samples of vqav2 full all failed" in err and "boom" in err
    assert rows_of(tmp_path, "vqav2", "full") == []  # left to run again once fixed


def test_a_resumed_cell_with_rows_records_failures_and_finishes(checkpoint, tmp_path, monkeypatch):
    """The stop is for a cell whose first samples all fail; a cell with rows already (resumed
    after the samples before went well) writes its failures as error rows and finishes."""
    assert run_vqa(checkpoint, tmp_path, "--max-new-tokens", "2", "--limit", "4") == 0

    def broken(self, vlm, sample, task):
        raise ValueError("boom: a broken sample")

    monkeypatch.setattr(Runner, "_predict", broken)
    assert run_vqa(checkpoint, tmp_path, "--max-new-tokens", "2") == 0
    rows = rows_of(tmp_path, "vqav2", "full")
    assert len(rows) == 6 and sum("error" in r for r in rows) == 2


def test_a_dataset_file_that_does_not_parse_is_one_line(tmp_path):
    from mmretain.errors import DatasetFormatError
    from mmretain.eval.data import HubSplit, load_split

    copy = tmp_path / "copy"
    (copy / "data").mkdir(parents=True)
    (copy / "data" / "validation-00000-of-00001.jsonl").write_text('{"a": 1}\n{"a": 2\n')
    with pytest.raises(DatasetFormatError, match=r"cannot be read \(JSON parse error.*row 1\)"):
        load_split("vqav2", HubSplit("lmms-lab/VQAv2", "validation"), copy)
