"""The WER/CER metric: hand-worked cases, normalisation, a cross-check against jiwer."""

from __future__ import annotations

import random

import pytest

from llama_avsr.evaluation.metrics import ErrorCounts, char_errors, normalize, word_errors


def counts(e: ErrorCounts) -> tuple[int, int, int, int]:
    return e.substitutions, e.insertions, e.deletions, e.reference_length


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("the cat sat", "the cat sat", (0, 0, 0, 3)),
        ("the cat sat", "the dog sat", (1, 0, 0, 3)),  # one substitution
        ("the cat sat", "the cat sat down", (0, 1, 0, 3)),  # one insertion at the end
        ("the cat sat", "the big cat sat", (0, 1, 0, 3)),  # one insertion in the middle
        ("the cat sat", "cat sat", (0, 0, 1, 3)),  # one deletion
        ("a b c d e", "a x c e", (1, 0, 1, 5)),  # b→x, d deleted
        ("a b c", "x y z w", (3, 1, 0, 3)),  # all wrong, one extra word
        ("a b c", "", (0, 0, 3, 3)),  # empty hypothesis: every word deleted
        ("", "a b", (0, 2, 0, 0)),  # empty reference: every word inserted
        ("", "", (0, 0, 0, 0)),
    ],
)
def test_word_error_counts_on_hand_worked_cases(ref, hyp, expected):
    assert counts(word_errors(ref, hyp)) == expected


def test_rates_and_sums():
    assert word_errors("a b c d", "a x c").rate == pytest.approx(2 / 4)
    assert word_errors("a b", "a b c d e").rate == pytest.approx(3 / 2)  # WER can exceed 100 %
    assert word_errors("a b c", "").rate == 1.0
    # an empty reference has no length: any output is wrong (rate 1), none is right (rate 0)
    assert word_errors("", "a").rate == 1.0 and word_errors("", "").rate == 0.0
    total = word_errors("a b c d", "a x c") + word_errors("e f", "e f g")
    assert counts(total) == (1, 1, 1, 6) and total.rate == pytest.approx(3 / 6)
    assert total.as_dict("wer") == {"wer": 0.5, "wer_sub": 1, "wer_ins": 1, "wer_del": 1, "wer_ref": 6}


def test_character_errors_count_spaces_of_the_normalised_text():
    assert counts(char_errors("kitten", "sitting")) == (2, 1, 0, 6)  # the textbook case
    assert counts(char_errors("ab cd", "abcd")) == (0, 0, 1, 5)  # the space is a character
    assert counts(char_errors("Ab,  CD!", "ab cd")) == (0, 0, 0, 5)  # normalised before counting


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Hello, World!", "hello world"),
        ("  lots   of\tspace\n", "lots of space"),
        ("don't stop", "don't stop"),  # apostrophes stay: one word
        ("well-known", "well known"),  # hyphens split
        ("under_score", "under score"),
        ("Ｆｕｌｌ－ｗｉｄｔｈ", "full width"),  # NFKC
        ("Café NAÏVE", "café naïve"),  # letters with accents are letters
        ("room 101.", "room 101"),
        ("?!.,", ""),
    ],
)
def test_normalisation(text, normal):
    assert normalize(text) == normal


def test_punctuation_and_case_are_not_errors():
    assert word_errors("The cat's hat, please.", "the cat's hat please").errors == 0


def test_counts_agree_with_jiwer_on_random_pairs():
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(0)
    vocab = "the a cat dog sat on mat red blue big small ran".split()
    for _ in range(300):
        ref = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 15)))
        words = ref.split()
        hyp_words = []
        for w in words:  # corrupt the reference: substitutions, deletions, insertions
            r = rng.random()
            if r < 0.15:
                continue
            hyp_words.append(rng.choice(vocab) if r < 0.35 else w)
            if rng.random() < 0.1:
                hyp_words.append(rng.choice(vocab))
        hyp = " ".join(hyp_words)
        mine = word_errors(ref, hyp)
        if not hyp:
            assert counts(mine) == (0, 0, len(words), len(words))
            continue
        theirs = jiwer.process_words(ref, hyp)
        assert counts(mine) == (theirs.substitutions, theirs.insertions, theirs.deletions, len(words))
        assert mine.rate == pytest.approx(theirs.wer)
        c_theirs = jiwer.process_characters(ref, hyp)
        c_mine = char_errors(ref, hyp)
        assert (c_mine.substitutions, c_mine.insertions, c_mine.deletions) == (
            c_theirs.substitutions,
            c_theirs.insertions,
            c_theirs.deletions,
        )


def test_minimum_edit_distance_on_random_pairs():
    """The total error count is the Levenshtein distance (checked against a plain dynamic programme)."""

    def distance(a: list[str], b: list[str]) -> int:
        prev = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            cur = [i]
            for j, y in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
            prev = cur
        return prev[-1]

    rng = random.Random(1)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        e = word_errors(" ".join(a), " ".join(b))
        assert e.errors == distance(a, b) and e.reference_length == len(a)
