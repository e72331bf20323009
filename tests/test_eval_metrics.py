"""The metrics give the reference evaluations' numbers, on their own examples and edge cases."""

from __future__ import annotations

import pytest

from mmretain.eval.metrics import (
    anls,
    exact_match,
    gqa_exact_match,
    levenshtein,
    mme_scores,
    normalize_vqa_answer,
    parse_egoschema_choice,
    parse_first_capital,
    parse_mme_yes_no,
    parse_pope_answer,
    parse_ranked_choice,
    parse_scienceqa_letter,
    pope_scores,
    relaxed_accuracy,
    textvqa_accuracy,
    vqa_accuracy,
)
from mmretain.eval.scorers import MMEScore, OptionLetter, YesNo
from mmretain.eval.tasks import TASKS


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


# As lmms-eval 0.7.3's exact_match (ignore_case, ignore_punctuation) scores them.
@pytest.mark.parametrize(
    ("prediction", "answer", "score"),
    [
        ("red - white", "red white", 0.0),
        ("red  car", "red car", 0.0),
        ("Yes.", "yes", 1.0),
        ("T-shirt", "tshirt", 1.0),
    ],
)
def test_gqa_exact_match_keeps_spaces_as_lmms_eval(prediction, answer, score):
    assert gqa_exact_match(prediction, answer) == score


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


# The POPE cases below were scored by lmms-eval 0.7.3's own POPE functions: accuracy 0.3,
# precision, recall and F1 1/3 (its yes-ratio, 0.6, is the share of "yes" labels).
POPE_REPLIES = ["yes", "Yes.", "no", "No", " YES ", "yes, there is", "no", "maybe", "no", "yes"]
POPE_LABELS = ["yes", "yes", "no", "yes", "no", "yes", "no", "yes", "yes", "no"]


@pytest.mark.parametrize(
    ("text", "said"),
    [("yes", "yes"), (" YES ", "yes"), ("No", "no"), ("Yes.", None), ("yes, there is", None)],
)
def test_pope_reads_only_a_bare_yes_or_no(text, said):
    assert parse_pope_answer(text) == said


def test_pope_scores_as_lmms_eval():
    scores = pope_scores([parse_pope_answer(r) for r in POPE_REPLIES], POPE_LABELS)
    assert scores.accuracy == pytest.approx(0.3)
    assert scores.precision == pytest.approx(1 / 3)
    # Recall counts only "no" answers as missed: "Yes.", "yes, there is" and "maybe" on "yes"
    # questions are wrong but outside its denominator.
    assert scores.recall == pytest.approx(1 / 3)
    assert scores.f1 == pytest.approx(1 / 3)
    assert scores.yes_ratio == pytest.approx(0.3)  # answers that are "yes" (the POPE paper's)
    assert scores.count == 10


def test_pope_headline_is_f1_over_every_question():
    yes_no = YesNo()
    rows = []
    for i, (reply, label) in enumerate(zip(POPE_REPLIES, POPE_LABELS, strict=True)):
        scored = yes_no.score(reply, label, ())
        category = "adversarial" if i < 5 else "random"
        rows.append(
            {
                "score": scored.score,
                "parsed": scored.parsed,
                "answer": label,
                "groups": {"category": category},
            }
        )
    summary = yes_no.summarize(rows)
    assert summary["score"] == pytest.approx(100 / 3)
    assert summary["all/accuracy"] == pytest.approx(30.0)
    assert summary["adversarial/accuracy"] == pytest.approx(40.0)  # 2 of its 5 right


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


# Expected letters below are what lmms-eval 0.7.3's own readers return for the same text ("" or
# a random letter there is None here).
@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A or B", "A"),  # a standalone first letter ranks highest
        ("The correct answer is B, not A.", "A"),  # a standalone last letter beats the phrase
        ("Cannot determine", "C"),  # no rule applies: a capital anywhere, the latest
        ("B", "B"),
        ("(C)", "C"),
        ("D. a cat", "D"),
        ("The answer is (B).", "B"),
        ("Answer: C", "C"),
        ("I think it is B", "B"),
        ("A red car", "A"),
        ("(A) because (B) is wrong", "B"),  # same rank: the later one
        ("Best option: (D", "D"),
        ("答案是C", "C"),
        ("I choose D, definitely", "D"),
        ("It is C: the car", "C"),
        ('  "A"  ', "A"),
        ("Both A and B are wrong; C", "C"),
        ("'C'.", "C"),
        ("blue", None),
        ("E", None),  # Video-MME and MLVU read A-D only
        ("a", None),
        ("the answer is a dog", None),
        ("None of them", None),
        ("", None),
    ],
)
def test_video_mme_and_mlvu_read_the_ranked_letter(text, letter):
    assert parse_ranked_choice(text, "ABCD") == letter
    for task in ("videomme", "videomme_sub", "mlvu_dev"):
        assert TASKS[task].scorer.score(text, "C", ("w", "x", "y", "z")).parsed == letter


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("Definitely C.", "D"),  # the first capital A-E, even inside a word
        ("C", "C"),
        ("The best answer is B", "B"),
        ("Best answer: C", "C"),  # its lead-ins are removed first, "Best" and all
        ("Best option: A", "A"),
        ("Answer: C", "A"),
        ("The answer: D", "D"),
        ("(D) a dog", "D"),
        ("E", "E"),  # read even past the last option
        ("the answer is c", None),  # lmms-eval draws a random letter for these
        ("no letter here at all", None),
        ("", None),
    ],
)
def test_longvideobench_reads_the_first_capital(text, letter):
    assert parse_first_capital(text) == letter
    assert TASKS["longvideobench_val"].scorer.score(text, "C", "wxyz").parsed == letter


EGO_OPTIONS = [
    "c washes the dishes",
    "c cooks dinner",
    "c reads a book",
    "c walks the dog",
    "c paints a wall",
]


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A or B", "A"),
        ("B.", "B"),
        ("(C)", "C"),
        ("The answer is (D).", "D"),
        ("I think C.", "C"),
        ("E.", "E"),
        ("(A) not (B)", "A"),  # the form whose last occurrence comes first
        ("Answer: B", "B"),
        ("he thinks that c. c reads a book probably", "C"),  # an option quoted, long answer
        ("c reads a book", None),  # quoted, but five words or fewer
        ("the man in the video is doing something", None),
        ("C, because", None),
        ("b", None),
        ("", None),
    ],
)
def test_egoschema_reads_as_mmmu(text, letter):
    assert parse_egoschema_choice(text, EGO_OPTIONS) == letter
    assert TASKS["egoschema_subset"].scorer.score(text, "C", EGO_OPTIONS).parsed == letter


@pytest.mark.parametrize(
    ("text", "right"),
    [
        ("b", True),  # lower case accepted
        ("B", True),
        (" B ", True),
        ("B.", True),
        ("B. a cat", True),
        ("(B)", False),
        ("The answer is B", False),
        ("b. cat", False),
        ("Bb", False),
        ("C", False),
    ],
)
def test_scienceqa_takes_the_letter_or_letter_period_only(text, right):
    scored = TASKS["scienceqa_img"].scorer.score(text, "B", ("x", "y", "z"))
    assert (scored.score == 1.0) is right
    assert parse_scienceqa_letter("A red car") is None


def test_unparsed_multiple_choice_is_wrong_and_recorded():
    for task in ("videomme", "longvideobench_val", "egoschema_subset", "scienceqa_img"):
        scored = TASKS[task].scorer.score("no idea", "A", ("x", "y", "z", "w"))
        assert scored.score == 0.0 and scored.parsed is None, task


def test_mlvu_m_avg_divides_by_its_seven_task_types():
    rows = [
        {"score": s, "answer": "A", "groups": {"task_type": t}}
        for s, t in [(1.0, "count"), (1.0, "count"), (0.0, "count"), (1.0, "needle")]
    ]
    summary = TASKS["mlvu_dev"].scorer.summarize(rows, ["task_type"])
    # As lmms-eval's MLVU code computes it: (66.7 + 100 + 0 * 5) / 7 = 23.8.
    assert summary["score"] == pytest.approx((200 / 3 + 100) / 7)
    assert summary["task_type=count"] == pytest.approx(200 / 3)


def test_error_rows_without_a_reference_are_not_scored():
    rows = [{"score": 1.0, "answer": "A"}, {"score": 0.0, "answer": None, "error": "KeyError"}]
    assert OptionLetter(lambda text, options: None).summarize(rows)["score"] == 100.0


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
