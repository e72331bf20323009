"""How a task turns one prediction into a row's score, and a cell's rows into its numbers.

A row (see `mmretain.eval.runner`) carries ``score``, ``parsed`` (the yes/no or letter read from
the prediction, None when unreadable), ``answer`` (the reference) and ``groups`` (fields such as
POPE's category or Video-MME's duration). A sample that failed after its reference was read is
an error row scored as a wrong answer, so a broken sample can never raise a score; one whose
reference could not even be read (``answer`` None) is only counted as an error. Summaries are
percentages (MME: its 0-2000 / 0-800 points); ``"score"`` is the headline number.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .metrics import (
    BinaryScores,
    mme_scores,
    parse_mme_yes_no,
    parse_pope_answer,
    pope_scores,
)

Row = dict[str, Any]


@dataclass(frozen=True)
class Scored:
    score: float
    parsed: str | None = None


def grouped(rows: Sequence[Row], field: str) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if field in row.get("groups", {}):
            groups[str(row["groups"][field])].append(row)
    return dict(sorted(groups.items()))


def scorable(rows: Sequence[Row]) -> list[Row]:
    """Rows with a reference answer: every row but errors raised before it could be read."""
    return [row for row in rows if row.get("answer") is not None]


class Scorer(ABC):
    """Scores one prediction; summarises a cell's rows, overall and per reported group."""

    headline = "accuracy"
    parses: ClassVar[bool] = False  # reads a yes/no or a letter: rows record unparsed answers

    @abstractmethod
    def score(self, prediction: str, answer: Any, options: Sequence[str]) -> Scored:
        """The score of ``prediction`` against the reference ``answer``."""

    def overall(self, rows: Sequence[Row]) -> float:
        """The headline number of ``rows``: by default the mean score, in percent."""
        return 100 * sum(row["score"] for row in rows) / len(rows) if rows else 0.0

    def summarize(self, rows: Sequence[Row], by: Sequence[str] = ()) -> dict[str, float]:
        rows = scorable(rows)
        summary = {"score": self.overall(rows)}
        for field in by:
            for value, subset in grouped(rows, field).items():
                summary[f"{field}={value}"] = self.group_score(subset)
        return summary

    def group_score(self, rows: Sequence[Row]) -> float:
        """The number reported for one group of ``rows``: by default the headline's."""
        return self.overall(rows)


@dataclass(frozen=True)
class Averaged(Scorer):
    """A per-answer metric ``fn(prediction, answer)`` in [0, 1], averaged."""

    fn: Callable[[str, Any], float]
    headline: str = "accuracy"

    def score(self, prediction: str, answer: Any, options: Sequence[str]) -> Scored:
        return Scored(float(self.fn(prediction, answer)))


# Reads the option letter of an answer, given the options; None when it cannot.
LetterReader = Callable[[str, Sequence[str]], str | None]


@dataclass(frozen=True)
class OptionLetter(Scorer):
    """Multiple choice: the option letter ``read`` from the answer must be the reference letter.

    ``read`` is the task's own reader (see `mmretain.eval.metrics`). ``average_over`` names a
    group whose per-group accuracies are averaged for the headline instead of averaging over
    questions; ``over`` lists the groups it always divides by, a group without rows counting 0
    (MLVU's M-Avg over its 7 task types, as lmms-eval computes it).
    """

    read: LetterReader
    average_over: str | None = None
    over: tuple[str, ...] = ()
    parses: ClassVar[bool] = True

    def score(self, prediction: str, answer: Any, options: Sequence[str]) -> Scored:
        letter = self.read(prediction, options)
        return Scored(float(letter is not None and letter == answer), letter)

    def overall(self, rows: Sequence[Row]) -> float:
        if self.average_over is None:
            return super().overall(rows)
        groups = {name: [] for name in self.over} | grouped(rows, self.average_over)
        return sum(map(super().overall, groups.values())) / len(groups) if groups else 0.0

    def group_score(self, rows: Sequence[Row]) -> float:
        """Accuracy over the group's questions (an MLVU task type's own accuracy)."""
        return super().overall(rows)


class YesNoAnswer(Scorer):
    """Questions answered yes or no: the answer read from the prediction must be the
    reference's ("yes" or "no")."""

    parses: ClassVar[bool] = True
    # How the benchmark's reference evaluation reads a yes or a no from a reply.
    parse: ClassVar[Callable[[str], str | None]]

    def score(self, prediction: str, answer: Any, options: Sequence[str]) -> Scored:
        said = self.parse(prediction)
        return Scored(float(said is not None and said == answer), said)


@dataclass(frozen=True)
class YesNo(YesNoAnswer):
    """POPE, as lmms-eval's ``pope`` task scores it: the reply must be exactly "yes" or "no"
    (any case); the headline is F1 over every question. Accuracy, precision, recall, F1 and
    yes-ratio are reported over all questions and per ``category`` (adversarial, popular,
    random)."""

    category: str = "category"
    headline = "F1"
    parse = staticmethod(parse_pope_answer)

    def _scores(self, rows: Sequence[Row]) -> BinaryScores:
        return pope_scores([row.get("parsed") for row in rows], [row["answer"] for row in rows])

    def overall(self, rows: Sequence[Row]) -> float:
        return 100 * self._scores(rows).f1

    def summarize(self, rows: Sequence[Row], by: Sequence[str] = ()) -> dict[str, float]:
        rows = scorable(rows)
        summary = {"score": self.overall(rows)}
        for name, subset in {"all": list(rows), **grouped(rows, self.category)}.items():
            scores = self._scores(subset)
            for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                summary[f"{name}/{metric}"] = 100 * getattr(scores, metric)
        return summary


@dataclass(frozen=True)
class MMEScore(YesNoAnswer):
    """MME: acc + acc+ per subtask; headline perception (0-2000), cognition (0-800) beside it.
    ``image`` is the group holding each question's image."""

    subtask: str = "category"
    image: str = "question_id"
    headline = "perception"
    parse = staticmethod(parse_mme_yes_no)

    def _scores(self, rows: Sequence[Row]) -> dict[str, float]:
        return mme_scores(
            (row["groups"][self.subtask], row["groups"][self.image], row["score"] == 1.0)
            for row in rows
        )

    def overall(self, rows: Sequence[Row]) -> float:
        return self._scores(rows)["perception"]

    def summarize(self, rows: Sequence[Row], by: Sequence[str] = ()) -> dict[str, float]:
        scores = self._scores(scorable(rows))
        return {"score": scores.pop("perception"), **scores}
