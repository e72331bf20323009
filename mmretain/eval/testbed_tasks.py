"""The test-bed suite: `mmretain.testbed`'s procedural generators as evaluation tasks.

One task per generator and length: the image needle at its canvas size, the dialogue, and the
video suites at 1x, 4x and 8x the length the test-bed models were trained on (``video-needle@128``
is 128 frames; the needle among distractors at 4x and 8x only), needles spread evenly over the
test-bed's depths. Samples come from the
held-out ("eval") seeds, so the models never trained on them; answers are one word, scored by
exact match.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import media
from ..testbed import SUITES as GENERATORS
from ..testbed import Sample, make_sample
from ..testbed.evaluate import DEPTHS
from .metrics import exact_match
from .sample import EvalSample, MediaSettings, Reference
from .scorers import Averaged, Scorer

SIZE = 500  # samples per task when --limit does not say
FRAMES_PER_SECOND = 1.0  # the rate the test-bed writes its videos at


class FrameArray(media.Video):
    """Frames already in memory behind the `media.Video` interface, so a generated video is
    streamed exactly as generated (an mp4 round trip would change its colours)."""

    def __init__(self, frames: np.ndarray, fps: float = FRAMES_PER_SECOND) -> None:
        self.frames = frames
        count, height, width = frames.shape[:3]
        self.info = media.VideoInfo(
            Path("<memory>"), fps, count, count / fps, width, height, "pyav"
        )
        self.indices = list(range(count))

    def chunks(self, chunk_frames: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.frames), chunk_frames):
            yield self.frames[start : start + chunk_frames]


@dataclass(frozen=True)
class TestbedTask:
    """One generator at one length; the same interface as a benchmark `Task`."""

    name: str
    generator: str
    length: int
    suite: str = "testbed"
    scorer: Scorer = field(default_factory=lambda: Averaged(exact_match, "accuracy"))
    max_new_tokens: int = 4
    size: int = SIZE

    @property
    def is_video(self) -> bool:
        return GENERATORS[self.generator].is_video

    @property
    def report_by(self) -> tuple[str, ...]:
        return ("question", "depth") if self.is_video else ("question",)

    def open(
        self, path: Path | None = None, data_dir: Path | None = None, video_dir: Path | None = None
    ) -> TestbedData:
        """Nothing to load: samples are generated on demand (the locations are not used)."""
        return TestbedData(self)


@dataclass
class TestbedData:
    task: TestbedTask
    _last: tuple[int, Sample] | None = None  # a sample is made once for its reference and input

    def __len__(self) -> int:
        return self.task.size

    def selection(self, limit: int | None) -> list[int]:
        """The first ``limit`` samples: consecutive indices cycle through the needle depths."""
        return list(range(min(limit or self.task.size, self.task.size)))

    def _make(self, index: int) -> Sample:
        if self._last is None or self._last[0] != index:
            depth = DEPTHS[index % len(DEPTHS)] if self.task.is_video else None
            sample = make_sample(
                self.task.generator, index, split="eval", length=self.task.length, depth=depth
            )
            self._last = (index, sample)
        return self._last[1]

    def reference(self, index: int) -> Reference:
        sample = self._make(index)
        groups = {"question": str(sample.metadata["question"])}
        if self.task.is_video:
            groups["depth"] = f"{sample.metadata['depth']:g}"
        return Reference(str(index), sample.answer, (), groups)

    def sample(self, index: int, reference: Reference, settings: MediaSettings) -> EvalSample:
        sample = self._make(index)
        question = sample.question
        if sample.videos:
            return EvalSample(index, reference, question, video=FrameArray(sample.videos[0]))
        return EvalSample(index, reference, question, messages=sample.messages)

    def check(self, indices: Sequence[int]) -> None:
        """Generated samples have no files to look for."""


def testbed_tasks() -> dict[str, TestbedTask]:
    """Every generator: video ones at each of their length factors of the training length."""
    tasks = {}
    for name, spec in GENERATORS.items():
        for length in spec.eval_lengths:
            key = f"{name}@{length}" if spec.is_video else name
            tasks[key] = TestbedTask(key, name, length)
    return tasks
