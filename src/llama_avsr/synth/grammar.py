"""A small sentence grammar for the synthetic corpus (≈280 words, seven sentence shapes, ≈3 s spoken).

Splits are made so that evaluation measures generalisation, not memorisation:

- every sentence occurs in at most one split (test and validation sentences are never seen in training);
- a seed-chosen set of (adjective, noun) combinations is *held out*: training and validation sentences
  never contain them, and about half of the test sentences are built around one of them;
- each split draws from its own random stream, generated in the order test → validation → training, so
  the test sentences depend only on ``seed`` and ``n_test`` (growing the training set keeps the test set).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

NAMES = (
    "alice bob carol david emma frank grace henry irene jack kate leo mary nick olivia peter rose sam "
    "tina victor wendy oscar laura james sarah thomas anna paul lucy mike"
).split()

#: (base form, past form) of the transitive verbs
VERBS = tuple(
    tuple(p.split("/"))
    for p in (
        "move/moved push/pushed pull/pulled carry/carried find/found drop/dropped paint/painted "
        "clean/cleaned open/opened close/closed hide/hid take/took bring/brought put/put lift/lifted "
        "wash/washed fix/fixed buy/bought sell/sold throw/threw catch/caught keep/kept leave/left "
        "place/placed kick/kicked check/checked show/showed fold/folded wrap/wrapped cut/cut send/sent "
        "hold/held see/saw watch/watched draw/drew break/broke"
    ).split()
)

ADJECTIVES = (
    "red green blue yellow black white brown orange purple pink gray golden small big tiny huge "
    "old new heavy soft hard round long short broken shiny dirty wooden metal "
    "empty cold wet dry dark"
).split()

NOUNS = (
    "box ball cup book chair lamp key bag hat shoe coat pen plate bottle spoon knife clock phone "
    "ring map kite bell rope basket blanket candle mirror bucket ladder hammer brush "
    "jacket letter picture apple cake shirt wheel bowl toy"
).split()

PREPOSITIONS = "on under behind near beside inside above below into onto across beneath over by".split()

PLACES = (
    "table kitchen garden desk shelf bed sofa floor roof wall car truck boat train bridge river park "
    "school office garage hall stairs fence tree hill beach street market library station "
    "cupboard window"
).split()

TIMES = "today yesterday tomorrow tonight now again later early soon quickly slowly carefully gently twice".split()

NUMBERS = "two three four five six seven eight nine".split()

#: sentence shapes; ``{adj}``+``{noun}`` is the combination that can be held out
TEMPLATES = (
    "{name} {past} the {adj} {noun} {prep} the {place}",
    "{name} will {base} the {adj} {noun} {prep} the {place}",
    "please {base} the {adj} {noun} {prep} the {place} {time}",
    "did {name} {base} the {adj} {noun} {time}",
    "the {adj} {noun} was {prep} the {adj2} {place} {time}",
    "{name} and {name2} {past} {number} {adj} {nouns}",
    "{name} {past} the {noun2} and the {adj} {noun} {time}",
)

#: fraction of (adjective, noun) combinations reserved for the test split
HELD_OUT_FRACTION = 0.06
#: fraction of test sentences built around a held-out combination
TEST_HELD_OUT_SHARE = 0.5

SPLITS = ("train", "val", "test")


def plural(noun: str) -> str:
    """English plural of the grammar's nouns (regular rules are enough for this vocabulary)."""
    if noun.endswith("fe"):
        return noun[:-2] + "ves"
    if re.search(r"(s|x|sh|ch)$", noun):
        return noun + "es"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + "s"


def vocabulary() -> list[str]:
    """All words the grammar can produce, sorted; the index of a word is its id in the label CSV."""
    words = set(NAMES) | set(ADJECTIVES) | set(NOUNS) | set(PREPOSITIONS) | set(PLACES)
    words |= set(TIMES) | set(NUMBERS) | {plural(n) for n in NOUNS}
    words |= {w for pair in VERBS for w in pair}
    for t in TEMPLATES:
        words |= {w for w in t.split() if not w.startswith("{")}
    return sorted(words)


_VOCAB_INDEX = {w: i for i, w in enumerate(vocabulary())}


def word_ids(text: str) -> list[int]:
    """Vocabulary indices of the words of ``text`` (the 4th field of the label CSV)."""
    return [_VOCAB_INDEX[w] for w in text.split()]


@dataclass(frozen=True)
class Sentence:
    """One sentence: ``text`` is the lowercase transcript, ``spoken`` what the synthesiser reads
    (with punctuation that shapes intonation, e.g. a question mark)."""

    text: str
    spoken: str
    template: int


def held_out_pairs(seed: int) -> frozenset[tuple[str, str]]:
    """The (adjective, noun) combinations that only the test split may contain."""
    rng = np.random.default_rng([seed, 7])
    pairs = [(a, n) for a in ADJECTIVES for n in NOUNS]
    k = max(1, int(round(HELD_OUT_FRACTION * len(pairs))))
    idx = rng.choice(len(pairs), size=k, replace=False)
    return frozenset(pairs[i] for i in sorted(idx))


def _pick(rng: np.random.Generator, items: list[str] | tuple[str, ...], avoid: str | None = None) -> str:
    while True:
        w = items[int(rng.integers(len(items)))]
        if w != avoid:
            return w


def _sample(rng: np.random.Generator, pair: tuple[str, str] | None) -> tuple[Sentence, tuple[str, str]]:
    t = int(rng.integers(len(TEMPLATES)))
    base, past = VERBS[int(rng.integers(len(VERBS)))]
    adj, noun = pair if pair is not None else (_pick(rng, ADJECTIVES), _pick(rng, NOUNS))
    name = _pick(rng, NAMES)
    fields = {
        "name": name,
        "name2": _pick(rng, NAMES, avoid=name),
        "base": base,
        "past": past,
        "adj": adj,
        "adj2": _pick(rng, ADJECTIVES),
        "noun": noun,
        "noun2": _pick(rng, NOUNS, avoid=noun),
        "nouns": plural(noun),
        "prep": _pick(rng, PREPOSITIONS),
        "place": _pick(rng, PLACES),
        "time": _pick(rng, TIMES),
        "number": _pick(rng, NUMBERS),
    }
    text = TEMPLATES[t].format(**fields)
    spoken = text + ("?" if text.startswith("did ") else ".")
    return Sentence(text, spoken, t), (adj, noun)


def make_splits(n_train: int, n_val: int, n_test: int, seed: int = 0) -> dict[str, list[Sentence]]:
    """Distinct sentences for each split (see the module docstring for the guarantees).

    Deterministic in ``seed``; the test split depends only on ``seed`` and ``n_test``, the validation
    split on those and ``n_val``.
    """
    held = sorted(held_out_pairs(seed))
    seen: set[str] = set()
    out: dict[str, list[Sentence]] = {}
    for split_id, (split, n) in enumerate((("test", n_test), ("val", n_val), ("train", n_train))):
        rng = np.random.default_rng([seed, 11, split_id])
        sentences: list[Sentence] = []
        while len(sentences) < n:
            force = split == "test" and rng.random() < TEST_HELD_OUT_SHARE
            pair = held[int(rng.integers(len(held)))] if force else None
            s, used = _sample(rng, pair)
            if s.text in seen or (split != "test" and used in held):
                continue
            seen.add(s.text)
            sentences.append(s)
        out[split] = sentences
    return {s: out[s] for s in SPLITS}


def contains_pair(text: str, pairs: frozenset[tuple[str, str]]) -> bool:
    """Whether ``text`` holds one of the (adjective, noun-or-plural) combinations as adjacent words."""
    words = text.split()
    for a, b in zip(words, words[1:], strict=False):
        if (a, b) in pairs or any(a == p[0] and b == plural(p[1]) for p in pairs):
            return True
    return False
