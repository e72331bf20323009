"""The metrics give the reference evaluations' numbers, on their own examples and edge cases."""

from __future__ import annotations

import pytest

from mmretain.eval.metrics import (
    anls,
    exact_match,
    extract_option_letter,
    levenshtein,
    mme_scores,
    normalize_vqa_answer,
    parse_mme_yes_no,
    parse_yes_no,
    pope_scores,
    relaxed_accuracy,
    textvqa_accuracy,
    vqa_accuracy,
)
from mmretain.eval.scorers import MMEScore, OptionLetter, YesNo


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two dogs.", "2 dogs"),  # period dropped, number word to digit
        ("1,000", "1000"),  # thousands separator removed
        ("dont", "don't"),  # missing apostrophe restored
        ("The cat", "cat"),  # articles dropped
        ("an apple", "apple"),
        ("3.5", "3.5"),  # a decimal point stays
        ("yes/no", "yes no"),  # a mark inside a word becomes a space
        ("red, white", "red white"),  # a mark next to a space is deleted
        ("  Yes.\n", "yes"),
        ("NONE", "0"),
        ("o'clock", "o'clock"),  # apostrophes are kept
    ],
)
def test_vqa_normalization_matches_the_official_rules(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


@pytest.mark.parametrize(
    ("matches", "accuracy"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0)]
)
def test_vqa_accuracy_is_the_leave_one_out_mean(matches, accuracy):
    answers = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("two", answers) == pytest.approx(accuracy)


def test_vqa_accuracy_normalizes_both_sides():
    assert vqa_accuracy("Two dogs.", ["2 dogs"] * 10) == 1.0
    assert vqa_accuracy("1000", ["1,000"] * 10) == 1.0
    with pytest.raises(ValueError, match="human answer"):
        vqa_accuracy("yes", [])


def test_exact_match_ignores_case_and_punctuation():
    assert exact_match("Yes.", "yes") == 1.0
    assert exact_match("left side", "left") == 0.0


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0


def test_anls_at_and_around_the_threshold():
    assert anls("abcd", ["abce"]) == pytest.approx(0.75)  # NL = 0.25
    assert anls("abcd", ["abef"]) == 0.0  # NL = 0.5: at the threshold scores nothing
    assert anls("abcdefg", ["abcdxyz"]) == pytest.approx(1 - 3 / 7)  # just under it
    assert anls(" Hello  World ", ["hello world"]) == 1.0  # case and spacing do not count
    assert anls("abcd", ["zzzz", "abcd"]) == 1.0  # the best reference
    assert anls("", [""]) == 1.0
    # The distance is over the longer raw length, as lmms-eval 0.7.3 divides: 1 - 1/5.
    assert anls(" abc ", ["abcd"]) == pytest.approx(0.8)


def test_chartqa_relaxed_accuracy_allows_five_percent():
    assert relaxed_accuracy("12", "12.5") == 1.0  # 4% off
    assert relaxed_accuracy("11", "12.5") == 0.0  # 12% off
    assert relaxed_accuracy("5%", "0.05") == 1.0  # percentages are fractions
    assert relaxed_accuracy("Yes", "yes") == 1.0  # text: exact, ignoring case
    assert relaxed_accuracy("yes ", "yes") == 0.0  # nothing stripped, as lmms-eval 0.7.3
    assert relaxed_accuracy("0.0", "0") == 0.0  # a zero reference allows no relative error


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("Yes.", "yes"),
        ("yes", "yes"),
        ("No, there is not.", "no"),
        ("There is no dog in the image.", "no"),
        ("Yes, there is a dog. No other animal.", "yes"),
        ("There is a dog.", None),  # neither: unparsed, not guessed
        ("", None),
    ],
)
def test_yes_no_parsing(text, said):
    assert parse_yes_no(text) == said


def test_pope_scores_count_unparsed_as_wrong():
    scores = pope_scores(["yes", "yes", "no", None], ["yes", "no", "no", "yes"])
    assert scores.accuracy == 0.5
    assert scores.precision == 0.5  # 1 true positive of 2 "yes"
    assert scores.recall == 0.5  # 1 of 2 "yes" questions found: the unparsed one is missed
    assert scores.f1 == 0.5
    assert scores.yes_ratio == 0.5
    assert scores.count == 4


def test_pope_counts_a_yes_with_a_period_as_yes():
    yes_no = YesNo()
    rows = [
        {"score": yes_no.score("Yes.", "yes", ()).score, "parsed": "yes", "answer": "yes"},
        {"score": yes_no.score("No.", "no", ()).score, "parsed": "no", "answer": "no"},
    ]
    assert [row["score"] for row in rows] == [1.0, 1.0]
    assert yes_no.summarize(rows)["all/accuracy"] == 100.0


def test_mme_is_acc_plus_acc_plus_per_subtask():
    answers = [
        ("existence", "1.png", True),
        ("existence", "1.png", True),
        ("existence", "2.png", True),
        ("existence", "2.png", False),
        ("code_reasoning", "3.png", True),
        ("code_reasoning", "3.png", False),
    ]
    scores = mme_scores(answers)
    assert scores["existence"] == 75 + 50
    assert scores["perception"] == 125
    assert scores["cognition"] == 50 + 0


def test_mme_scorer_reads_images_from_row_groups():
    rows = [
        {"score": s, "answer": "yes", "groups": {"category": "count", "question_id": image}}
        for s, image in [(1.0, "a"), (1.0, "a"), (0.0, "b"), (1.0, "b")]
    ]
    assert MMEScore().summarize(rows) == {"score": 125.0, "cognition": 0.0, "count": 125.0}


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("D. a cat", "D"),
        ("C) blue", "C"),
        ("The answer is (B).", "B"),
        ("Answer: C", "C"),
        ("I think it is B", "B"),
        ("blue", "C"),  # the whole answer is one option's text
        ("A red car", None),  # "A" the article, and no option says so
        ("A or B", None),  # ambiguous
        ("E", None),  # not an option
        ("the answer is a dog", None),  # lower-case "a" is a word, not a letter
        ("", None),
    ],
)
def test_option_letter_extraction_never_guesses(text, letter):
    assert extract_option_letter(text, "ABCD", ["red", "green", "blue", "yellow"]) == letter


def test_unparsed_multiple_choice_is_wrong_and_recorded():
    scored = OptionLetter().score("no idea", "A", ("x", "y", "z", "w"))
    assert scored.score == 0.0 and scored.parsed is None


def test_m_avg_averages_task_types_not_questions():
    rows = [
        {"score": s, "answer": "A", "groups": {"task_type": t}}
        for s, t in [(1.0, "count"), (1.0, "count"), (1.0, "count"), (0.0, "needle")]
    ]
    summary = OptionLetter(average_over="task_type").summarize(rows, ["task_type"])
    assert summary["score"] == 50.0  # (100 + 0) / 2, not 3 / 4
    assert summary["task_type=count"] == 100.0


def test_error_rows_without_a_reference_are_not_scored():
    rows = [{"score": 1.0, "answer": "A"}, {"score": 0.0, "answer": None, "error": "KeyError"}]
    assert OptionLetter().summarize(rows)["score"] == 100.0


@pytest.mark.parametrize(
    ("prediction", "read"),
    [
        ("Yes", "yes"),
        ("no.", "no"),
        ("Yes, there is a dog.", "yes"),
        ("I think yes", None),  # only the first four characters count
        ("There is no dog", None),
        ("None", "no"),
        ("nope", "no"),
        ("y", "yes"),
        ("n", "no"),
        ("b", None),
        ("", None),
    ],
)
def test_mme_reads_yes_and_no_as_lmms_eval(prediction, read):
    assert parse_mme_yes_no(prediction) == read
    assert MMEScore().score(prediction, "yes", ()).parsed == read


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        ("hes", "he's", 0.0),  # "'s" is split off before the contractions are read
        ("red,white", "redwhite", 1.0),  # commas dropped first
        ("What?", "what", 1.0),
        ("Two", "2", 1.0),
    ],
)
def test_textvqa_normalises_as_lmms_eval(prediction, reference, score):
    assert textvqa_accuracy(prediction, [reference] * 10) == score
