"""Each task reads its hub dataset's fields and prompts as lmms-eval does by default."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from mmretain.errors import DatasetNotFoundError, UnknownTaskError
from mmretain.eval import testbed_tasks as testbed
from mmretain.eval.data import HubSplit, load_split
from mmretain.eval.prompts import SHORT_ANSWER
from mmretain.eval.sample import MediaSettings
from mmretain.eval.subtitles import NO_SUBTITLES, parse_srt, subtitles_at
from mmretain.eval.tasks import TASKS, select_tasks
from mmretain.testbed import make_sample


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Datasets the tests write are prepared in a temporary cache, not the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("cache"))


def prompt_and_reference(name, row):
    task = TASKS[name]
    options = task.options(row) if task.options else []
    return task.prompt(row, options), task.answer(row), options


def test_hub_ids_are_those_of_lmms_eval_0_7_3():
    # The dataset_path, dataset_name and test_split of each task's YAML in lmms-eval 0.7.3.
    where = {name: (t.data.hub_id, t.data.config, t.data.split) for name, t in TASKS.items()}
    assert where == {
        "vqav2": ("lmms-lab-encoder/VQAv2", None, "validation"),
        "gqa": ("lmms-lab-encoder/GQA", "testdev_balanced_instructions", "testdev"),
        "textvqa": ("lmms-lab-encoder/textvqa", None, "validation"),
        "textvqa_ocr": ("lmms-lab-encoder/textvqa", None, "validation"),
        "pope": ("lmms-lab-encoder/POPE", None, "test"),
        "mme": ("lmms-lab-encoder/MME", None, "test"),
        "scienceqa_img": ("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG", "test"),
        "chartqa": ("lmms-lab-encoder/ChartQA", None, "test"),
        "docvqa": ("lmms-lab-encoder/DocVQA", "DocVQA", "validation"),
        "videomme": ("lmms-eval/Video-MME", None, "test"),
        "videomme_sub": ("lmms-eval/Video-MME", None, "test"),
        "mlvu_dev": ("sy1998/MLVU_dev", None, "test"),
        "longvideobench_val": ("longvideobench/LongVideoBench", None, "validation"),
        "egoschema_subset": ("lmms-eval/egoschema", "Subset", "test"),
    }


def test_short_answer_prompts():
    prompt, answer, _ = prompt_and_reference(
        "vqav2", {"question": "What is it?", "answers": [{"answer": "cat"}] * 10}
    )
    assert prompt == f"What is it?\n{SHORT_ANSWER}" and answer == ["cat"] * 10
    prompt, answer, _ = prompt_and_reference(
        "mme", {"question": "Is it red? Please answer yes or no.", "answer": "Yes"}
    )
    assert prompt == f"Is it red?\n{SHORT_ANSWER}" and answer == "yes"
    with pytest.raises(ValueError, match="not yes or no"):
        prompt_and_reference("pope", {"question": "Is there a dog?", "answer": "maybe"})
    prompt, _, _ = prompt_and_reference("chartqa", {"question": "How many?", "answer": "3"})
    assert prompt == "How many?\nAnswer the question with a single word."


def test_textvqa_ocr_option_appends_the_ocr_tokens_as_llava_1_5():
    row = {"question": "what does it say?", "answers": ["stop"] * 10, "ocr_tokens": ["STOP", "4"]}
    plain, _, _ = prompt_and_reference("textvqa", row)
    with_ocr, _, _ = prompt_and_reference("textvqa_ocr", row)
    assert plain == f"What does it say?\n{SHORT_ANSWER}"
    assert with_ocr == f"What does it say?\nReference OCR token: STOP, 4\n{SHORT_ANSWER}"


# Expected prompts are what lmms-eval 0.7.3's doc_to_text functions return for the same rows
# with each task's default lmms_eval_specific_kwargs.
@pytest.mark.parametrize(
    ("task", "row", "prompt"),
    [
        ("vqav2", {"question": "What is it?"}, "What is it?\n{short}"),
        ("textvqa", {"question": "what is written?"}, "What is written?\n{short}"),
        (
            "chartqa",
            {"question": "How many?"},
            "How many?\nAnswer the question with a single word.",
        ),
        ("docvqa", {"question": "What date?"}, "What date?\n{short}"),
        (
            "mme",
            {"question": "Is there a dog? Please answer yes or no."},
            "Is there a dog?\n{short}",
        ),
        ("pope", {"question": " Is there a dog? "}, "Is there a dog?\n{short}"),
    ],
)
def test_short_answer_prompts_are_lmms_evals(task, row, prompt):
    short = "Answer the question using a single word or phrase."
    assert TASKS[task].prompt(row, []) == prompt.format(short=short)


def test_scienceqa_prompt_and_letter():
    row = {"hint": "A lab.", "question": "Which is a metal?", "choices": ["wood", "iron"]}
    prompt, answer, options = prompt_and_reference("scienceqa_img", {**row, "answer": 1})
    assert prompt == (
        "Context: A lab.\nWhich is a metal?\nA. wood\nB. iron\n"
        "Answer with the option's letter from the given choices directly."
    ) and (answer, options) == ("B", ["wood", "iron"])
    prompt, _, _ = prompt_and_reference("scienceqa_img", {**row, "hint": "", "answer": 0})
    assert prompt.startswith("Which is a metal?")


def test_video_multiple_choice_prompts_are_lmms_evals():
    mme = {"question": "What?", "options": ["A. one.", "B. two."], "answer": "B"}
    prompt, answer, options = prompt_and_reference("videomme", mme)
    assert prompt == (
        "Select the best answer to the following multiple-choice question based on the video "
        "and the subtitles. Respond with only the letter (A, B, C, or D) of the correct option."
        "\nWhat?\nA. one.\nB. two.\n\nAnswer with the option's letter from the given choices "
        "directly."
    )
    assert (answer, options) == ("B", ["one.", "two."])
    sub = TASKS["videomme_sub"].prompt({**mme, "subtitles": "Hi."}, ["one.", "two."])
    assert sub == (
        "This video's subtitles are listed below: \nHi.\nSelect the best answer to the following "
        "multiple-choice question based on the video and the subtitles. Respond with only the "
        "letter (A, B, C, or D) of the correct option.\nWhat?\nA. one.\nB. two.\n"
        "The best answer is:"
    )

    lvb = {"question": "Who?", "correct_choice": 2}
    lvb |= {f"option{i}": text for i, text in enumerate(["a", "b", "c", "d", "N/A"])}
    prompt, answer, options = prompt_and_reference("longvideobench_val", lvb)
    assert prompt == (
        "Who?\nA. a\nB. b\nC. c\nD. d\n"
        "Answer with the option's letter from the given choices directly.\n"
    )
    assert answer == "C" and TASKS["longvideobench_val"].max_new_tokens == 32

    ego = {"question": "Why?", "option": [f"{c}. o{c}" for c in "ABCDE"], "answer": "3"}
    prompt, answer, options = prompt_and_reference("egoschema_subset", ego)
    assert prompt == (
        "Why?\nA. oA\nB. oB\nC. oC\nD. oD\nE. oE\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert answer == "D" and options == ["oA", "oB", "oC", "oD", "oE"]

    mlvu = {"question": "How many?\n(A) one\n(B) two\n(C) three", "answer": "C"}
    prompt, answer, options = prompt_and_reference("mlvu_dev", mlvu)
    assert (
        prompt
        == "How many?\n(A) one\n(B) two\n(C) three\nOnly give the best option.\nBest option: ("
    )
    assert options == ["one", "two", "three"] and answer == "C"


def test_suites_and_task_selection():
    assert [t.name for t in select_tasks("vqa")] == [
        "vqav2",
        "gqa",
        "textvqa",
        "textvqa_ocr",
        "pope",
        "mme",
        "scienceqa_img",
        "chartqa",
        "docvqa",
    ]
    assert [t.name for t in select_tasks("video", ["videomme", "mlvu_dev"])] == [
        "videomme",
        "mlvu_dev",
    ]
    with pytest.raises(UnknownTaskError, match="unknown suite 'audio'"):
        select_tasks("audio")
    with pytest.raises(UnknownTaskError, match="no task 'pope' in the video suite"):
        select_tasks("video", ["pope"])


def test_testbed_suite_is_the_generators_at_several_lengths():
    names = list(testbed.testbed_tasks())
    assert {"image-needle", "dialogue", "video-needle@32", "video-needle@256"} <= set(names)
    lengths = [t.length for t in select_tasks("testbed", ["video-needle"])]
    assert lengths == [32, 128, 256]


def test_testbed_samples_are_the_generators_own():
    task = testbed.testbed_tasks()["video-needle@32"]
    data = task.open()
    reference = data.reference(3)
    sample = data.sample(3, reference, MediaSettings())
    expected = make_sample("video-needle", 3, split="eval", length=32, depth=0.75)
    assert reference.answer == expected.answer and reference.groups["depth"] == "0.75"
    assert isinstance(sample.video, testbed.FrameArray) and len(sample.video) == 32
    frames = np.concatenate(list(sample.video.chunks(10)))
    np.testing.assert_array_equal(frames, expected.videos[0])
    image = testbed.testbed_tasks()["image-needle"].open()
    assert image.sample(0, image.reference(0), MediaSettings()).images


def test_subtitles_of_the_sampled_frames_only(tmp_path):
    srt = tmp_path / "v.srt"
    srt.write_text(
        '1\n00:00:00,000 --> 00:00:02,000\n<font color="white">hello</font>\n\n'
        "2\n00:00:05,000 --> 00:00:06,500\nthere\n\n"
        "3\n00:01:00,000 --> 00:01:01,000\nlater\n"
    )
    assert [c.text for c in parse_srt(srt.read_text())] == ["hello", "there", "later"]
    assert subtitles_at(srt, [1.0, 6.0]) == "hello\nthere"
    assert subtitles_at(tmp_path / "none.srt", [1.0]) == NO_SUBTITLES


def test_gqa_joins_its_images_config(tmp_path):
    image = Image.new("RGB", (28, 28), "red")
    questions = [{"id": "q1", "imageId": "n1", "question": "What colour?", "answer": "red"}]
    images = [{"id": "n1", "image": image}]
    for config, rows, features in (
        ("testdev_balanced_instructions", questions, None),
        (
            "testdev_balanced_images",
            images,
            datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()}),
        ),
    ):
        (tmp_path / config).mkdir()
        dataset = datasets.Dataset.from_list(rows, features=features)
        dataset.to_parquet(tmp_path / config / "testdev-00000-of-00001.parquet")
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(
            f"- config_name: {c}\n  data_files:\n  - split: testdev\n    path: {c}/*.parquet\n"
            for c in ("testdev_balanced_instructions", "testdev_balanced_images")
        )
        + "---\n"
    )
    data = TASKS["gqa"].open(tmp_path)
    sample = data.sample(0, data.reference(0), MediaSettings())
    assert sample.reference.answer == "red" and sample.images[0].size == (28, 28)


def test_an_empty_data_dir_names_both_places_looked(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        TASKS["docvqa"].open(data_dir=tmp_path)
    assert str(tmp_path / "DocVQA") in str(error.value)
    assert str(tmp_path / "docvqa") in str(error.value)


def test_a_local_copy_without_the_split_is_a_dataset_error(tmp_path):
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_list([{"question": "q"}]).to_parquet(
        tmp_path / "data" / "train-00000-of-00001.parquet"
    )
    with pytest.raises(DatasetNotFoundError, match=r"split 'validation'.*local copy"):
        TASKS["vqav2"].open(Path(tmp_path))


def test_an_edited_local_copy_is_read_afresh(tmp_path):
    parquet = tmp_path / "data" / "test-00000-of-00001.parquet"
    parquet.parent.mkdir()
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: test\n    path: data/test-*.parquet\n---\n"
    )
    split = HubSplit("lmms-lab/POPE", "test")
    for answer in ("yes", "no"):
        datasets.Dataset.from_list([{"answer": answer}]).to_parquet(parquet)
        assert load_split("pope", split, tmp_path)[0]["answer"] == answer


@pytest.mark.parametrize(
    ("template", "name"),
    [("data/{v}.mp4", "../../secret"), ("data/{v}.mp4", "x/../../../y"), ("{v}", "/etc/passwd")],
)
def test_a_row_naming_a_video_outside_the_folder_is_refused(tmp_path, template, name):
    from mmretain.errors import UnsafeMediaPathError
    from mmretain.eval.data import VideoFiles

    files = VideoFiles(template, "videomme")
    with pytest.raises(UnsafeMediaPathError, match="outside the video folder"):
        files.candidates(tmp_path, {"v": name})
    inside = files.candidates(tmp_path, {"v": "a/../abc"})[0]
    assert inside.resolve().parent in (tmp_path, tmp_path / "data")
