"""Benchmark metrics and answer readers, as lmms-eval 0.7.3 computes and reads them.

- VQA accuracy (VQAv2, TextVQA): https://visualqa.org/evaluation.html — answers normalised the
  official way, then the mean over the 10 leave-one-out subsets of the human answers of
  min(1, matches / 3).
- ANLS (DocVQA): Biten et al., https://arxiv.org/abs/1905.13648, threshold 0.5.
- Relaxed accuracy (ChartQA): Masry et al., https://arxiv.org/abs/2203.10244, 5% tolerance.
- POPE: Li et al., https://arxiv.org/abs/2305.10355 — accuracy, precision, recall, F1, yes-ratio.
- MME: Fu et al., https://arxiv.org/abs/2306.13394 — acc + acc+ per subtask, summed.

Answers are read as lmms-eval 0.7.3 reads them, task by task (yes/no for POPE and MME, the
option letter for each multiple-choice task); what remains different is listed in eval/README.md.
A reader never guesses: where lmms-eval draws a random letter, the answer is `None` (unparsed)
and every metric counts it as wrong.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# -- VQA answer normalisation --------------------------------------------------------------------

# The marks the official evaluation strips. The period is handled apart (decimals keep theirs);
# apostrophes and colons are kept.
_MARKS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@")
_MARKS += ("`", ",", "?", "!")
_THOUSANDS = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
# Spellings the official evaluation maps to one form: "canonical: variants". Its entries with
# capitals ("Im", "Ive", ...) are left out: it lower-cases words before the lookup, so they never
# apply. "somebodyd" is as the reference has it (it maps the apostrophe form to the bare one).
_SPELLINGS = """
ain't: aint
aren't: arent
can't: cant
could've: couldve
couldn't: couldnt
couldn't've: couldn'tve couldnt've
didn't: didnt
doesn't: doesnt
don't: dont
hadn't: hadnt
hadn't've: hadnt've hadn'tve
hasn't: hasnt
haven't: havent
he'd: hed
he'd've: hed've he'dve
he's: hes
how'd: howd
how'll: howll
how's: hows
isn't: isnt
it'd: itd
it'd've: itd've it'dve
it'll: itll
ma'am: maam
mightn't: mightnt
mightn't've: mightnt've mightn'tve
might've: mightve
mustn't: mustnt
must've: mustve
needn't: neednt
not've: notve
o'clock: oclock
oughtn't: oughtnt
'ow's'at: ow's'at 'ows'at 'ow'sat
shan't: shant
she'd've: shed've she'dve
should've: shouldve
shouldn't: shouldnt
shouldn't've: shouldnt've shouldn'tve
somebodyd: somebody'd
somebody'd've: somebodyd've somebody'dve
somebody'll: somebodyll
somebody's: somebodys
someone'd: someoned
someone'd've: someoned've someone'dve
someone'll: someonell
someone's: someones
something'd: somethingd
something'd've: somethingd've something'dve
something'll: somethingll
that's: thats
there'd: thered
there'd've: thered've there'dve
there're: therere
there's: theres
they'd: theyd
they'd've: theyd've they'dve
they'll: theyll
they're: theyre
they've: theyve
'twas: twas
wasn't: wasnt
we'd've: wed've we'dve
we've: weve
weren't: werent
what'll: whatll
what're: whatre
what's: whats
what've: whatve
when's: whens
where'd: whered
where's: wheres
where've: whereve
who'd: whod
who'd've: whod've who'dve
who'll: wholl
who's: whos
who've: whove
why'll: whyll
why're: whyre
why's: whys
won't: wont
would've: wouldve
wouldn't: wouldnt
wouldn't've: wouldnt've wouldn'tve
y'all: yall
y'all'll: yall'll y'allll
y'all'd've: yall'd've y'alld've y'all'dve
you'd: youd
you'd've: youd've you'dve
you'll: youll
you're: youre
you've: youve
"""
_CONTRACTIONS = {
    variant: canonical
    for line in _SPELLINGS.strip().splitlines()
    for canonical, variants in [line.split(": ")]
    for variant in variants.split()
}


def _strip_punctuation(text: str) -> str:
    # A mark next to a space, or any mark once the text has a thousands separator, is deleted
    # ("1,000" -> "1000"); a mark inside a word becomes a space ("black/white" -> "black white").
    deleted = _THOUSANDS.search(text) is not None
    out = text
    for mark in _MARKS:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if deleted or touches_space else " ")
    return _PERIOD.sub("", out)


def normalize_vqa_answer(text: str) -> str:
    """The official VQA normalisation: punctuation, periods, case, number words, articles,
    contractions. ``"Two dogs."`` -> ``"2 dogs"``; ``"1,000"`` -> ``"1000"``."""
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = (_NUMBER_WORDS.get(word, word) for word in text.lower().split())
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_textvqa_answer(text: str) -> str:
    """TextVQA's normalisation in lmms-eval 0.7.3 (EvalAI's answer processor): commas and
    question marks dropped and "'s" split off first, then the VQA normalisation. So "hes" does
    not match "he's", and "red,white" matches "redwhite"."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return normalize_vqa_answer(text)


def vqa_accuracy(
    prediction: str,
    answers: Sequence[str],
    normalize: Callable[[str], str] = normalize_vqa_answer,
) -> float:
    """Mean over the leave-one-out subsets of the human answers of min(1, matches / 3).

    Both sides are normalised (as the evaluation server does for submissions and the TextVQA
    evaluator for both), so "Yes." matches "yes" whether or not the annotators agreed.
    """
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    predicted = normalize(prediction)
    hits = [normalize(answer) == predicted for answer in answers]
    matches = sum(hits)
    # Leaving answer i out removes it from the matches when it matched.
    return sum(min(1.0, (matches - hit) / 3) for hit in hits) / len(hits)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy with TextVQA's normalisation (`normalize_textvqa_answer`)."""
    return vqa_accuracy(prediction, answers, normalize_textvqa_answer)


# -- exact match ---------------------------------------------------------------------------------

_STRIP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_exact(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (the test-bed's exact match)."""
    return " ".join(text.lower().translate(_STRIP_PUNCTUATION).split())


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize_exact(prediction) == normalize_exact(answer))


def gqa_exact_match(prediction: str, answer: str) -> float:
    """GQA's exact match in lmms-eval 0.7.3: case and punctuation ignored, spaces kept as they
    are ("red - white" is not "red white")."""
    return float(
        prediction.lower().translate(_STRIP_PUNCTUATION)
        == answer.lower().translate(_STRIP_PUNCTUATION)
    )


# -- ANLS ----------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one answer: the best over the references of
    1 - NL, where NL is the edit distance of the normalised strings (case, spaces) over the
    longer raw length, as lmms-eval divides (" abc " against "abcd": 0.8); 0 once NL reaches
    ``threshold`` (the paper's s = 1 - NL if NL < τ else 0, where lmms-eval keeps NL = τ)."""
    if not answers:
        raise ValueError("ANLS needs at least one reference answer")
    predicted = " ".join(prediction.strip().lower().split())
    best = 0.0
    for answer in answers:
        reference = " ".join(answer.strip().lower().split())
        # Upper-cased lengths, as lmms-eval measures them ("ß" counts two).
        longest = max(len(prediction.upper()), len(answer.upper()))
        distance = levenshtein(predicted, reference) / longest if longest else 0.0
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


# -- ChartQA relaxed accuracy --------------------------------------------------------------------


def _number(text: str) -> float | None:
    """A float from "12", "12.5" or "12%" (as a fraction: 0.12), else None."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, answer: str, tolerance: float = 0.05) -> float:
    """1 if a numeric answer is within ``tolerance`` (relative) of the reference, or a
    non-numeric one matches it ignoring case. As in the reference (and lmms-eval), a reference
    of 0 allows no relative error and is compared as text, and nothing is stripped: "yes " is
    not "yes"."""
    value, target = _number(prediction), _number(answer)
    if value is not None and target:
        return float(abs(value - target) / abs(target) <= tolerance)
    return float(prediction.lower() == answer.lower())


# -- yes / no ------------------------------------------------------------------------------------


def parse_pope_answer(text: str) -> str | None:
    """ "yes" or "no" when the whole reply is that word, in any case and spacing; else None.
    POPE's lmms-eval code compares the lower-cased, stripped reply with the label, so "Yes."
    is neither."""
    said = text.lower().strip()
    return said if said in ("yes", "no") else None


def parse_mme_yes_no(text: str) -> str | None:
    """ "yes", "no" or None, read as lmms-eval 0.7.3 reads MME answers (after Otter's eval):
    full stops dropped; "y"/"n" alone count; otherwise only the first four characters are
    looked at, "yes" there before "no" ("None" and "nope" are no; "I think yes" is unparsed)."""
    said = text.lower().strip().replace(".", "")
    if said in ("yes", "no"):
        return said
    if len(said) == 1:
        return {"y": "yes", "n": "no"}.get(said)
    head = said[:4]
    return "yes" if "yes" in head else "no" if "no" in head else None


@dataclass(frozen=True)
class BinaryScores:
    """POPE's numbers for one set of answers, each in [0, 1]."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    count: int


def pope_scores(predictions: Sequence[str | None], labels: Sequence[str]) -> BinaryScores:
    """POPE's metrics with "yes" as the positive class, as lmms-eval 0.7.3 counts them. An
    unparsed answer (None) is wrong; like lmms-eval, recall counts only "no" answers as missed
    yeses, so an unparsed answer to a "yes" question lowers accuracy but not recall. The
    yes-ratio is the share of answers that are "yes", as the POPE paper defines it (lmms-eval
    reports the share of "yes" labels instead)."""
    if len(predictions) != len(labels):
        raise ValueError("one prediction per label")
    if any(label not in ("yes", "no") for label in labels):
        raise ValueError("POPE labels are 'yes' or 'no'")
    pairs = list(zip(predictions, labels, strict=True))
    true_pos = sum(p == "yes" and y == "yes" for p, y in pairs)
    predicted_yes = sum(p == "yes" for p, _ in pairs)
    missed = sum(p == "no" and y == "yes" for p, y in pairs)
    correct = sum(p == y for p, y in pairs)
    precision = true_pos / predicted_yes if predicted_yes else 0.0
    recall = true_pos / (true_pos + missed) if true_pos + missed else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pairs)
    return BinaryScores(
        correct / n if n else 0.0, precision, recall, f1, predicted_yes / n if n else 0.0, n
    )


# -- MME -----------------------------------------------------------------------------------------

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)


def mme_scores(answers: Iterable[tuple[str, str, bool]]) -> dict[str, float]:
    """MME from (subtask, image, correct) triples: per subtask acc (questions right, %) plus
    acc+ (images with every question right, %); "perception" and "cognition" sum them."""
    by_subtask: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for subtask, image, correct in answers:
        by_subtask[subtask][image].append(bool(correct))
    scores = {}
    for subtask, images in by_subtask.items():
        results = [r for answers in images.values() for r in answers]
        acc = 100 * sum(results) / len(results)
        acc_plus = 100 * sum(all(answers) for answers in images.values()) / len(images)
        scores[subtask] = acc + acc_plus
    return {
        "perception": sum(scores.get(s, 0.0) for s in MME_PERCEPTION),
        "cognition": sum(scores.get(s, 0.0) for s in MME_COGNITION),
        **scores,
    }


# -- multiple choice -----------------------------------------------------------------------------
#
# lmms-eval 0.7.3 reads the letter differently for each task; each reader below gives the letter
# its task's code reads, or None where that code reads none (an empty string, or a letter drawn
# at random: EgoSchema, LongVideoBench). None always scores as wrong and is reported unparsed.


def option_letters(count: int) -> str:
    """ "ABCD" for four options."""
    if not 0 < count <= 26:
        raise ValueError(f"a multiple-choice question has 1 to 26 options, got {count}")
    return string.ascii_uppercase[:count]


# Phrases after which the first capital of each letter counts as the answer (Video-MME, MLVU),
# as lmms-eval lists them, in English, Korean, Chinese and Japanese.
_ANSWER_PHRASES = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
)
# How a letter is written, most telling first; a letter found by no rule at all counts last.
_LETTER_FORMS = (("({})", 6), ("{}.", 5), ("{}:", 4), ("{})", 3), ("{} ", 2))
_STARTS, _ENDS, _PHRASE, _ANYWHERE = 10, 9, 7, 0


def parse_ranked_choice(text: str, letters: str = "ABCD") -> str | None:
    """The letter Video-MME's and MLVU's lmms-eval code reads: every way a letter is written
    ranks (a standalone letter first, then last, then after "the answer is", "(B)", "B.",
    "B:", "B)", "B "), the best rank wins and, within it, the latest place. A capital letter
    anywhere counts only when no rule finds one. "A or B" -> A, "The correct answer is B, not
    A." -> A, "Cannot determine" -> C."""
    said = text.strip()
    if not said:
        return None
    for mark in ",.!?;:'\"":  # peeled off both ends, one mark after the other
        said = said.strip(mark)
    padded = f" {said} "
    found: list[tuple[int, int, str]] = []  # (rank, place, letter)
    for form, rank in _LETTER_FORMS:
        found += [
            (rank, padded.rfind(form.format(c)), c) for c in letters if form.format(c) in padded
        ]
    lowered = padded.lower()
    for phrase in _ANSWER_PHRASES:
        after = lowered.find(phrase)
        if after >= 0:
            after += len(phrase)
            found += [(_PHRASE, padded.find(c, after), c) for c in letters if c in padded[after:]]
    bare = padded.strip()
    for c in letters:
        if bare.startswith(c) and not bare[1:2].isalpha():
            found.append((_STARTS, 0, c))
        if bare.endswith(c) and not bare[-2:-1].isalpha():
            found.append((_ENDS, len(padded) - 1, c))
    if not found:
        found = [(_ANYWHERE, padded.rfind(c), c) for c in letters if c in padded]
    # max() keeps the first of equals, as a stable sort does.
    return max(found, key=lambda item: item[:2])[2] if found else None


# Lead-ins LongVideoBench's code removes before it looks for a letter ("Best answer: C" is C,
# not the B of "Best"); removed in this order, wherever they are.
_LVB_LEAD_INS = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)
_CAPITAL_A_TO_E = re.compile("[A-E]")


def parse_first_capital(text: str) -> str | None:
    """LongVideoBench's reading: after its lead-ins are removed, the first capital A-E anywhere,
    even inside a word ("Definitely C." -> D) or past the last option. None where lmms-eval
    draws a random letter."""
    said = text.strip()
    for lead_in in _LVB_LEAD_INS:
        said = said.replace(lead_in, "")
    found = _CAPITAL_A_TO_E.search(said)
    return found.group() if found else None


_EGOSCHEMA_LETTERS = "ABCDE"


def parse_egoschema_choice(text: str, options: Sequence[str]) -> str | None:
    """EgoSchema's reading (MMMU's parser): "(B)", "B " and "B." anywhere, the one whose last
    occurrence comes first winning; with none of those in an answer of more than five words,
    the option (as the dataset writes it, "B. text") quoted in lower case. None where lmms-eval
    draws a random letter."""
    said = text
    for mark in ",.!?;:'":  # peeled off both ends, one mark after the other
        said = said.strip(mark)
    padded = f" {said} "
    # Places are those of the last occurrence of each form, ties going to the earlier form.
    forms = ("({})", "{} ", "{}.")
    found = [
        (padded.rfind(form.format(c)), c)
        for form in forms
        for c in _EGOSCHEMA_LETTERS
        if form.format(c) in padded
    ]
    if not found and len(padded.split()) > 5:
        lowered = padded.lower()
        letters = option_letters(len(options))
        quoted = [f"{c}. {option}".lower() for c, option in zip(letters, options, strict=True)]
        found = [
            (lowered.rfind(q), c) for q, c in zip(quoted, letters, strict=True) if q in lowered
        ]
    # min() keeps the first of equals.
    return min(found, key=lambda item: item[0])[1] if found else None


def parse_scienceqa_letter(text: str) -> str | None:
    """ScienceQA's reading (LLaVA's): the letter alone, in either case, or a capital followed
    by a full stop ("B. a cat"); anything else ("(B)", "The answer is B", "b. cat") is
    unparsed."""
    said = text.strip()
    if len(said) == 1 and said in string.ascii_letters:
        return said.upper()
    if len(said) >= 2 and said[0] in string.ascii_uppercase and said[1] == ".":
        return said[0]
    return None
