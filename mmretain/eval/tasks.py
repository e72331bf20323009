"""The benchmarks: each task is one `Task` — hub id and split, where its fields are, its prompt
and its metric — in a registry by name, grouped into suites.

VQA suite: VQAv2 (https://visualqa.org), GQA (https://cs.stanford.edu/people/dorarad/gqa),
TextVQA (https://textvqa.org; ``textvqa_ocr`` adds the OCR tokens as LLaVA-1.5 does), POPE
(https://arxiv.org/abs/2305.10355), MME (https://arxiv.org/abs/2306.13394), ScienceQA-IMG
(https://scienceqa.github.io), ChartQA (https://arxiv.org/abs/2203.10244), DocVQA
(https://www.docvqa.org).

Video suite: Video-MME (https://video-mme.github.io; ``videomme_sub`` with subtitles, both
reported per duration), MLVU dev (https://arxiv.org/abs/2406.04264, M-Avg over task types),
LongVideoBench val (https://longvideobench.github.io), EgoSchema subset
(https://egoschema.github.io).

The hub ids and splits are those lmms-eval reads; a local directory in the same layout works
the same way (see `mmretain.eval.data`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import UnknownTaskError
from . import prompts
from .data import (
    HubSplit,
    ImageJoin,
    JoinedImages,
    VideoFiles,
    check_videos,
    load_split,
    locate,
)
from .metrics import (
    anls,
    gqa_exact_match,
    parse_egoschema_choice,
    parse_first_capital,
    parse_ranked_choice,
    parse_scienceqa_letter,
    relaxed_accuracy,
    textvqa_accuracy,
    vqa_accuracy,
)
from .prompts import MultipleChoice, Options, Prompt, ShortAnswer
from .sample import EvalSample, MediaSettings, Reference, image_question
from .scorers import Averaged, MMEScore, OptionLetter, Scorer, YesNo
from .subtitles import subtitles_at

Row = dict[str, Any]
Answer = Callable[[Row], Any]


# -- where a row keeps its reference -------------------------------------------------------------


def value(field: str) -> Answer:
    return lambda row: str(row[field]).strip()


def texts(field: str, key: str | None = None) -> Answer:
    """A list of reference answers; ``key`` when each is a dict (VQAv2's ``answers``)."""

    def answers(row: Row) -> list[str]:
        items = row[field]
        if not items:
            raise ValueError(f"{field!r} holds no reference answer")
        return [str(item[key] if key else item) for item in items]

    return answers


def yes_no(field: str) -> Answer:
    """A reference that is "yes" or "no" (POPE, MME), in lower case."""

    def answer(row: Row) -> str:
        said = str(row[field]).strip().lower()
        if said not in ("yes", "no"):
            raise ValueError(f"{field!r} is {row[field]!r}, not yes or no")
        return said

    return answer


def letter(field: str) -> Answer:
    """The reference option letter, stored as a letter or as a 0-based index (int or text)."""

    def answer(row: Row) -> str:
        raw = str(row[field]).strip()
        return chr(ord("A") + int(raw)) if raw.isdigit() else raw.upper()

    return answer


# -- tasks ---------------------------------------------------------------------------------------


class TaskData(Protocol):
    """A task's rows, opened: what the runner needs to make and check samples."""

    def __len__(self) -> int: ...

    def selection(self, limit: int | None) -> list[int]: ...

    def reference(self, index: int) -> Reference: ...

    def sample(self, index: int, reference: Reference, settings: MediaSettings) -> EvalSample: ...

    def check(self, indices: Sequence[int]) -> None: ...


@dataclass(frozen=True)
class Task:
    """One benchmark split: where it is, how each row becomes a prompt, and how it is scored.

    ``groups`` are row fields copied into every result row; ``report_by`` are those reported
    separately in the tables. ``subtitles`` puts the subtitles of the sampled frames before the
    question (video tasks whose files have them).
    """

    name: str
    suite: str
    data: HubSplit
    prompt: Prompt
    scorer: Scorer
    answer: Answer
    id_field: str | None = None
    image: str | None = "image"
    video: VideoFiles | None = None
    options: Options | None = None
    groups: tuple[str, ...] = ()
    report_by: tuple[str, ...] = ()
    max_new_tokens: int = 16
    subtitles: bool = False

    def open(
        self, path: Path | None = None, data_dir: Path | None = None, video_dir: Path | None = None
    ) -> HubTaskData:
        """Load the rows (from ``path``, ``data_dir`` or the hub) and find the media roots."""
        location = locate(self.name, self.data, path, data_dir)
        rows = load_split(self.name, self.data, location)
        join = self.data.images
        images = JoinedImages.load(self.name, self.data, join, location) if join else None
        root = self.video.root(location, video_dir) if self.video else None
        return HubTaskData(self, rows, without_media(rows), images, root)


def without_media(rows: Any) -> Any:
    """A view of the rows without their image columns: reading a reference or a video's name
    then decodes no image (and a broken image cannot hide the reference)."""
    import datasets

    media = [name for name, kind in rows.features.items() if isinstance(kind, datasets.Image)]
    return rows.remove_columns(media) if media else rows


@dataclass
class HubTaskData:
    task: Task
    rows: Any  # datasets.Dataset
    fields: Any  # the same rows without their images
    images: JoinedImages | None
    video_root: Path | None

    def __len__(self) -> int:
        return len(self.rows)

    def selection(self, limit: int | None) -> list[int]:
        """``limit`` rows spread evenly over the split (all without a limit): splits are often
        sorted by category, and every category should be in a subset."""
        total = len(self.rows)
        if limit is None or limit >= total:
            return list(range(total))
        return [(2 * k + 1) * total // (2 * limit) for k in range(limit)]

    def reference(self, index: int) -> Reference:
        task, row = self.task, self.fields[index]
        ident = str(row[task.id_field]) if task.id_field else str(index)
        options = tuple(task.options(row)) if task.options else ()
        if task.options and not 0 < len(options) <= 26:
            raise ValueError(f"row {index} of {task.name} has {len(options)} options")
        groups = {g: str(row[g]) for g in task.groups}
        return Reference(ident, task.answer(row), options, groups)

    def sample(self, index: int, reference: Reference, settings: MediaSettings) -> EvalSample:
        task = self.task
        row = dict((self.rows if task.video is None else self.fields)[index])
        if task.video is None:
            image = self.images.image_for(row) if self.images else row[task.image]
            if image is None:
                raise ValueError(f"row {index} of {task.name} has no image")
            prompt = task.prompt(row, reference.options)
            return EvalSample(index, reference, prompt, messages=image_question(image, prompt))
        assert self.video_root is not None
        path = task.video.find(self.video_root, row)
        if path is None:
            wanted = task.video.candidates(self.video_root, row)[0]
            raise FileNotFoundError(f"video not found: {wanted}")
        video = settings.open(path)
        if task.subtitles:
            subtitle_file = task.video.subtitle_path(self.video_root, row)
            row[prompts.SUBTITLES] = subtitles_at(subtitle_file, video.timestamps)
        return EvalSample(index, reference, task.prompt(row, reference.options), video=video)

    def check(self, indices: Sequence[int]) -> None:
        if self.task.video is not None and self.video_root is not None:
            rows = [self.fields[i] for i in indices]
            check_videos(self.task.name, self.task.video, self.video_root, rows)


# How each task's lmms-eval code reads the option letter (see `mmretain.eval.metrics`).
# Video-MME and MLVU read A-D whatever the options; LongVideoBench any capital A-E.
RANKED = OptionLetter(lambda text, options: parse_ranked_choice(text, "ABCD"))
MLVU_TASK_TYPES = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")

_VIDEO_MME = dict(
    suite="video",
    data=HubSplit("lmms-eval/Video-MME", "test"),
    scorer=RANKED,
    answer=value("answer"),
    id_field="question_id",
    image=None,
    video=VideoFiles("data/{videoID}.mp4", "videomme", subtitles="subtitle/{videoID}.srt"),
    options=prompts.listed("options"),
    groups=("duration", "task_type"),
    report_by=("duration",),
)

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        # -- VQA suite
        Task(
            "vqav2",
            "vqa",
            HubSplit("lmms-lab-encoder/VQAv2", "validation"),
            ShortAnswer(),
            Averaged(vqa_accuracy, "VQA accuracy"),
            texts("answers", "answer"),
            "question_id",
            groups=("answer_type",),
            report_by=("answer_type",),
        ),
        Task(
            "gqa",
            "vqa",
            HubSplit(
                "lmms-lab-encoder/GQA",
                "testdev",
                "testdev_balanced_instructions",
                ImageJoin("testdev_balanced_images", "testdev", key="imageId"),
            ),
            ShortAnswer(),
            Averaged(gqa_exact_match, "exact match"),
            value("answer"),
            "id",
            image=None,
        ),
        Task(
            "textvqa",
            "vqa",
            HubSplit("lmms-lab-encoder/textvqa", "validation"),
            ShortAnswer(capitalize=True),
            Averaged(textvqa_accuracy, "VQA accuracy"),
            texts("answers"),
            "question_id",
        ),
        Task(
            "textvqa_ocr",
            "vqa",
            HubSplit("lmms-lab-encoder/textvqa", "validation"),
            ShortAnswer(capitalize=True, ocr="ocr_tokens"),
            Averaged(textvqa_accuracy, "VQA accuracy"),
            texts("answers"),
            "question_id",
        ),
        Task(
            "pope",
            "vqa",
            HubSplit("lmms-lab-encoder/POPE", "test"),
            ShortAnswer(),
            YesNo(),
            yes_no("answer"),
            "question_id",
            groups=("category",),
        ),
        Task(
            "mme",
            "vqa",
            HubSplit("lmms-lab-encoder/MME", "test"),
            ShortAnswer(drop=prompts.MME_YES_NO),
            MMEScore(),
            yes_no("answer"),
            groups=("category", "question_id"),
        ),
        Task(
            "scienceqa_img",
            "vqa",
            HubSplit("lmms-lab-encoder/ScienceQA", "test", "ScienceQA-IMG"),
            MultipleChoice(context="hint"),
            OptionLetter(lambda text, options: parse_scienceqa_letter(text)),
            letter("answer"),
            options=prompts.listed("choices"),
        ),
        Task(
            "chartqa",
            "vqa",
            HubSplit("lmms-lab-encoder/ChartQA", "test"),
            ShortAnswer(instruction=prompts.SINGLE_WORD),
            Averaged(relaxed_accuracy, "relaxed accuracy"),
            value("answer"),
            groups=("type",),
            report_by=("type",),
        ),
        Task(
            "docvqa",
            "vqa",
            HubSplit("lmms-lab-encoder/DocVQA", "validation", "DocVQA"),
            ShortAnswer(),
            Averaged(anls, "ANLS"),
            texts("answers"),
            "questionId",
            max_new_tokens=32,
        ),
        # -- long-video suite
        Task(
            "videomme",
            # lmms-eval's post_prompt starts with a newline: a blank line before it.
            prompt=MultipleChoice(
                header=prompts.VIDEO_MME, instruction=f"\n{prompts.OPTION_LETTER}"
            ),
            **_VIDEO_MME,
        ),
        Task(
            "videomme_sub",
            prompt=MultipleChoice(header=prompts.VIDEO_MME, instruction=prompts.BEST_ANSWER),
            subtitles=True,
            **_VIDEO_MME,
        ),
        Task(
            "mlvu_dev",
            "video",
            HubSplit("sy1998/MLVU_dev", "test"),
            MultipleChoice(instruction=prompts.BEST_OPTION, show_options=False),
            dataclasses.replace(RANKED, average_over="task_type", over=MLVU_TASK_TYPES),
            value("answer"),
            image=None,
            video=VideoFiles("{video_name}", "mlvu"),
            options=prompts.inline("question"),
            groups=("task_type",),
            report_by=("task_type",),
        ),
        Task(
            "longvideobench_val",
            "video",
            HubSplit("longvideobench/LongVideoBench", "validation"),
            MultipleChoice(instruction=f"{prompts.OPTION_LETTER}\n"),  # as lmms-eval ends it
            OptionLetter(lambda text, options: parse_first_capital(text)),
            letter("correct_choice"),
            "id",
            image=None,
            video=VideoFiles("videos/{video_path}", "longvideobench"),
            options=prompts.numbered("option", 5),
            groups=("duration_group",),
            report_by=("duration_group",),
            max_new_tokens=32,
        ),
        Task(
            "egoschema_subset",
            "video",
            HubSplit("lmms-eval/egoschema", "test", "Subset"),
            MultipleChoice(),
            OptionLetter(parse_egoschema_choice),
            letter("answer"),
            "question_idx",
            image=None,
            video=VideoFiles("videos/{video_idx}.mp4", "egoschema"),
            options=prompts.listed("option"),
        ),
    )
}

SUITES = ("vqa", "video", "testbed")


def suite_tasks(suite: str) -> dict[str, Any]:
    """The tasks of ``suite`` by name (the test-bed's are made from its generators)."""
    if suite == "testbed":
        from .testbed_tasks import testbed_tasks

        return testbed_tasks()
    if suite not in SUITES:
        raise UnknownTaskError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    return {name: task for name, task in TASKS.items() if task.suite == suite}


def select_tasks(suite: str, names: Sequence[str] = ()) -> list[Any]:
    """The tasks of ``suite`` named in ``names`` (all of them when empty), in registry order.

    A test-bed name without a length (``video-needle``) selects that suite at every length.
    """
    available = suite_tasks(suite)
    if not names:
        return list(available.values())
    chosen = []
    for name in names:
        matches = [t for key, t in available.items() if key == name or key.startswith(name + "@")]
        if not matches:
            raise UnknownTaskError(
                f"no task {name!r} in the {suite} suite; its tasks: {', '.join(available)}"
            )
        chosen.extend(t for t in matches if t not in chosen)
    return chosen
