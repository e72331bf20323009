"""Rows files, the report built from them, and the retention pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmretain import media
from mmretain.api import load
from mmretain.eval import retention_map
from mmretain.eval.records import CellFiles, RowWriter, read_rows
from mmretain.eval.report import write_report
from mmretain.eval.sample import EvalSample, Reference, image_question


def row(index, score, kv=50, **extra):
    return {
        "index": index,
        "id": str(index),
        "prediction": "x",
        "score": score,
        "answer": ["x"],
        "groups": {"answer_type": "number" if index % 2 else "other"},
        "kv_bytes": kv,
        "kv_peak_bytes": 100,
        "kv_full_bytes": 100,
        "seconds": 0.5,
        **extra,
    }


def write_cell(out, task, cell, rows):
    with RowWriter(out / "rows" / task / f"{cell}.jsonl") as writer:
        for r in rows:
            writer.append(r)


def test_report_gives_score_percent_of_full_and_kv_memory(tmp_path):
    write_cell(tmp_path, "vqav2", "full", [row(i, 1.0 if i < 3 else 0.0, kv=100) for i in range(4)])
    write_cell(tmp_path, "vqav2", "snapkv@0.1", [row(i, 1.0 if i < 1 else 0.0) for i in range(4)])
    error = {"index": 4, "id": "4", "error": "OSError: broken", "score": 0.0, "answer": ["x"]}
    write_cell(tmp_path, "vqav2", "snapkv@0.05", [row(0, 0.0, kv=20), {**error, "seconds": 0.1}])
    results = write_report(tmp_path)
    cells = {r.cell: r for r in results}
    assert list(cells) == ["full", "snapkv@0.05", "snapkv@0.1"]
    assert cells["full"].score == 75.0 and cells["snapkv@0.1"].score == 25.0
    assert cells["snapkv@0.1"].kv_percent == 50.0
    assert (cells["snapkv@0.05"].errors, cells["snapkv@0.05"].samples) == (1, 2)
    assert cells["snapkv@0.05"].kv_percent == 20.0  # error rows hold no cache
    report = (tmp_path / "report.md").read_text()
    line = "| vqav2 | VQA accuracy | snapkv | 0.1 | 25.0 | 33.3 | 50.0 | 100.0 | 4 | 0 | 0 |"
    assert line in report
    assert "| full | 50.0 | 100.0 |" in report  # by answer type: odd samples are "number"
    assert (tmp_path / "vqa_accuracy_vs_budget.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())[1]["cell"] == "snapkv@0.05"


def test_rows_survive_a_torn_last_line(tmp_path):
    path = tmp_path / "cell.jsonl"
    with RowWriter(path) as writer:
        writer.append(row(0, 1.0))
        writer.append(row(1, 0.0))
    with path.open("ab") as file:
        file.write(b'{"index": 2, "sco')  # a crash mid-write
    assert [r["index"] for r in read_rows(path)] == [0, 1]
    with RowWriter(path) as writer:  # the torn line is cut before appending
        writer.append(row(2, 1.0))
    assert [r["index"] for r in read_rows(path)] == [0, 1, 2]
    assert path.read_text().count("\n") == 3


def test_merge_folds_part_files_once_per_sample(tmp_path):
    cell = CellFiles(tmp_path, "tova@0.25")
    for rank, indices in ((0, [0, 2]), (1, [1, 3, 2])):  # sample 2 recorded twice
        with RowWriter(cell.part(rank, 2)) as writer:
            for i in indices:
                writer.append(row(i, float(rank)))
    rows = cell.merge()
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert rows[2]["score"] == 0.0  # the first record of a sample wins
    assert not cell.parts() and [r["index"] for r in read_rows(cell.path)] == [0, 1, 2, 3]


def image_sample():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    prompt = "what colour is the shape ?"
    return EvalSample(0, Reference("0", "red"), prompt, messages=image_question(image, prompt))


def test_image_retention_grid_follows_what_the_cache_kept(checkpoint, tmp_path):
    sample = image_sample()
    full = load(checkpoint, policy="full", budget=1.0)
    full.chat(sample.messages, max_new_tokens=2)
    np.testing.assert_array_equal(retention_map.image_grid(full, sample), np.ones((4, 4)))
    tight = load(checkpoint, policy="snapkv", budget=12, sink=2, recent=2, protect_turn=False)
    answer = tight.chat(sample.messages, max_new_tokens=2)
    grid = retention_map.image_grid(tight, sample)
    slots = 2 * 2  # layers x KV heads
    assert grid.sum() == pytest.approx(answer.stats.kept_by_modality["image"] / slots)
    assert grid.min() < 1.0
    path = tmp_path / "image.png"
    retention_map.save_image_picture(path, sample.images[0], grid, "snapkv at 12 tokens")
    assert Image.open(path).size[0] > 0


def test_video_strip_has_one_grid_per_frame_group(checkpoint, tmp_path):
    path = tmp_path / "clip.mp4"
    media.write_video(path, (np.full((56, 56, 3), 20 * i, np.uint8) for i in range(8)), 4)
    sample = EvalSample(0, Reference("0", "A"), "which came first ?", video=media.Video(path))
    vlm = load(checkpoint, policy="tova", budget=0.5)
    vlm.answer_video(sample.video, sample.prompt, chunk_frames=4, max_new_tokens=2)
    grid = retention_map.video_grid(vlm, sample)
    assert grid.shape == (4, 2, 2)  # 8 frames fused in pairs, 2 x 2 tokens each
    kept = vlm.run.cache.stats.kept_by_modality["video"] / (2 * 2)
    assert grid.sum() == pytest.approx(kept)
    retention_map.save_video_strip(tmp_path / "strip.png", sample.video, grid, "tova at 50%")
    assert (tmp_path / "strip.png").stat().st_size > 0
