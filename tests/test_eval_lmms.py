"""lmms-eval itself, offline, runs the mmretain model plugin on local tasks (test-bed image
needles, and Video-MME rows whose videos are streamed through the retained cache) under two
policies, and gives the same replies and scores as mmretain's own runner on the same samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed: pip install -e '.[lmms]'")

from mmretain.eval.grid import Cell, RunSettings
from mmretain.eval.records import read_rows
from mmretain.eval.runner import Locations, evaluate
from mmretain.eval.sample import MediaSettings
from mmretain.eval.tasks import TASKS
from mmretain.eval.testbed_tasks import testbed_tasks as make_testbed_tasks

VIDEOMME = Path(__file__).parent / "data" / "eval" / "videomme"
NEEDLES = 4
POLICIES = ("global", "snapkv")
BUDGET = "0.25"
FPS = 4.0  # the tiny Video-MME clips are a few seconds long

# The task YAMLs lmms-eval reads through --include_path: a local JSON dataset each, prompts
# and scores from mmretain's task definitions, so only the model path differs between runs.
UTILS = """
import json
from PIL import Image
from mmretain.eval.tasks import TASKS
from mmretain.eval.metrics import exact_match

VIDEOMME = TASKS["videomme"]


def needle_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def needle_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def needle_score(doc, results):
    return {"exact_match": exact_match(results[0], doc["answer"])}


def videomme_visual(doc):
    return [doc["video"]]


def videomme_text(doc, lmms_eval_specific_kwargs=None):
    row = json.loads(doc["row"])
    return VIDEOMME.prompt(row, VIDEOMME.options(row))


def videomme_score(doc, results):
    row = json.loads(doc["row"])
    scored = VIDEOMME.scorer.score(results[0], VIDEOMME.answer(row), VIDEOMME.options(row))
    return {"accuracy": scored.score}
"""
YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function mmretain_tasks.{prefix}_visual
doc_to_text: !function mmretain_tasks.{prefix}_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {tokens}
  do_sample: false
process_results: !function mmretain_tasks.{prefix}_score
metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def include(tmp_path_factory):
    """The include folder: the YAMLs, their functions and the JSON datasets they read."""
    folder = tmp_path_factory.mktemp("lmms_tasks")
    (folder / "mmretain_tasks.py").write_text(UTILS)
    needle = make_testbed_tasks()["image-needle"]
    data = needle.open()
    docs = []
    for index in range(NEEDLES):
        reference = data.reference(index)
        sample = data.sample(index, reference, MediaSettings())
        image = folder / f"needle{index}.png"  # lossless: the same pixels the runner sees
        sample.images[0].save(image)
        docs.append({"image": str(image), "question": sample.prompt, "answer": reference.answer})
    (folder / "needle.json").write_text(json.dumps(docs))
    rows = datasets.load_dataset(str(VIDEOMME), split="test")
    rows = rows.remove_columns([c for c in rows.column_names if c == "url"])
    videos = [
        {
            "video": str(VIDEOMME / "data" / f"{row['videoID']}.mp4"),
            "row": json.dumps(row),
            "answer": row["answer"],
        }
        for row in rows
    ]
    (folder / "videomme.json").write_text(json.dumps(videos))
    for task, prefix, tokens, metric in (
        ("mmretain_needle", "needle", needle.max_new_tokens, "exact_match"),
        ("mmretain_videomme", "videomme", TASKS["videomme"].max_new_tokens, "accuracy"),
    ):
        text = YAML.format(
            task=task, data=folder / f"{prefix}.json", prefix=prefix, tokens=tokens, metric=metric
        )
        (folder / f"{task}.yaml").write_text(text)
    return folder


def run_lmms_eval(include: Path, out: Path, policy: str) -> dict[str, list[dict]]:
    """lmms-eval's command line, offline, on the plugin; its logged samples by task."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(out / "hf"),
        "PYTHONPATH": str(include),
    }
    model_args = f"pretrained=testbed,policy={policy},budget={BUDGET},fps={FPS},device=cpu"
    command = [
        *(sys.executable, "-m", "lmms_eval", "--model", "mmretain"),
        *("--model_args", model_args, "--include_path", str(include)),
        *("--tasks", "mmretain_needle,mmretain_videomme", "--batch_size", "1"),
        *("--output_path", str(out), "--log_samples"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = out / "testbed"  # lmms-eval names it after the model
    samples = {}
    for task in ("mmretain_needle", "mmretain_videomme"):
        (logged,) = folder.glob(f"*_samples_{task}.jsonl")
        lines = logged.read_text().splitlines()
        samples[task] = sorted((json.loads(line) for line in lines), key=lambda s: s["doc_id"])
    (stats,) = folder.glob("*_mmretain_retention.jsonl")
    samples["stats"] = [json.loads(line) for line in stats.read_text().splitlines()]
    return samples


def run_mmretain(out: Path) -> dict[str, list[dict]]:
    """mmretain's own runner on the same samples and cells."""
    tasks = [make_testbed_tasks()["image-needle"], TASKS["videomme"]]
    grid = [Cell(policy, BUDGET) for policy in POLICIES]
    settings = RunSettings(model="testbed", fps=FPS, dtype="auto")
    evaluate(
        out,
        tasks,
        grid,
        settings,
        limit=NEEDLES,
        locations=Locations(paths={"videomme": VIDEOMME}),
        pictures=0,
        progress=False,
    )
    return {
        f"{task.name}/{cell.policy}": list(
            read_rows(out / "rows" / task.name / f"{cell.name}.jsonl")
        )
        for task in tasks
        for cell in grid
    }


def test_lmms_eval_with_the_plugin_scores_as_mmretains_runner(include, tmp_path):
    ours = run_mmretain(tmp_path / "mmretain")
    for policy in POLICIES:
        theirs = run_lmms_eval(include, tmp_path / policy, policy)
        for task, mine, metric in (
            ("mmretain_needle", ours[f"image-needle/{policy}"], "exact_match"),
            ("mmretain_videomme", ours[f"videomme/{policy}"], "accuracy"),
        ):
            logged = theirs[task]
            assert len(logged) == len(mine) > 0
            replies = [s["filtered_resps"] for s in logged]
            assert replies == [row["prediction"] for row in mine], (task, policy)
            assert [s[metric] for s in logged] == [row["score"] for row in mine], (task, policy)
        # The retention stats of every request are written beside lmms-eval's results.
        stats = theirs["stats"]
        assert len(stats) == NEEDLES + len(ours[f"videomme/{policy}"])
        assert {row["policy"] for row in stats} == {policy}
        video = [row for row in stats if row["task"] == "mmretain_videomme"]
        assert all(row["tokens_seen"]["video"] > 0 for row in video)  # streamed, then evicted
        assert all(row["kv_bytes"] < row["kv_full_bytes"] for row in stats)
        mine = ours[f"videomme/{policy}"]
        assert [row["kv_bytes"] for row in video] == [row["kv_bytes"] for row in mine]


def test_lmms_eval_finds_the_plugin_as_a_chat_model_by_name():
    from lmms_eval.models import get_model

    from mmretain.eval.lmms_model import RetainedLMM

    assert get_model("mmretain") is RetainedLMM
    assert RetainedLMM.is_simple is False  # lmms-eval hands it chat messages


def test_the_plugin_refuses_batches_and_unknown_args_before_loading_anything(capsys):
    from mmretain.errors import ConfigError
    from mmretain.eval.lmms_model import RetainedLMM

    # SystemExit: lmms-eval would catch the ConfigError and exit 0 (tests/test_bad_input.py).
    for args, message in [({"batch_size": 4}, "--batch_size"), ({"budgte": 0.1}, "budgte")]:
        with pytest.raises(SystemExit) as done:
            RetainedLMM(pretrained="/no/such/model", **args)
        assert done.value.code == 2 and isinstance(done.value.__cause__, ConfigError)
        assert message in capsys.readouterr().err


def test_the_plugin_cuts_at_stop_strings_and_refuses_sampling(include):
    from types import SimpleNamespace

    from PIL import Image

    from mmretain.errors import ConfigError
    from mmretain.eval.lmms_model import RetainedLMM

    (doc,) = json.loads((include / "needle.json").read_text())[:1]
    model = RetainedLMM(pretrained="testbed", policy="full", device="cpu")
    model.task_dict = {"needle": {"test": [doc]}}

    def messages(doc):
        image = Image.open(doc["image"]).convert("RGB")
        text = {"type": "text", "text": doc["question"]}
        return [{"role": "user", "content": [{"type": "image", "url": image}, text]}]

    def ask(**generation):
        request = SimpleNamespace(args=("", messages, generation, 0, "needle", "test"))
        return model.generate_until([request])[0]

    whole = ask(max_new_tokens=4)
    assert whole == doc["answer"]  # the full cache finds the needle
    assert ask(max_new_tokens=4, until=[whole[2:]]) == whole[:2]
    with pytest.raises(ConfigError, match="greedily"):
        ask(max_new_tokens=4, do_sample=True)
