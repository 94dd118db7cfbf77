"""Text normalisation and error rates (WER / CER with substitution, insertion, deletion counts).

Normalisation (applied to reference and hypothesis alike, documented in the README):
lower-case; Unicode NFKC; every character that is not a letter, digit, apostrophe or space becomes a
space (so "don't" stays one word, "well-known" becomes two); runs of spaces collapse. LRS3 transcripts
are already in this form, so scores on LRS3 match the published protocol.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

_NOT_WORD = re.compile(r"[^\w' ]|_")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _NOT_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


@dataclass
class ErrorCounts:
    """Edit-distance counts over a sequence of tokens (words or characters)."""

    substitutions: int = 0
    insertions: int = 0
    deletions: int = 0
    reference_length: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.insertions + self.deletions

    @property
    def rate(self) -> float:
        """Errors / reference length (a hypothesis for an empty reference counts every insertion)."""
        return self.errors / self.reference_length if self.reference_length else float(self.errors > 0)

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.insertions + other.insertions,
            self.deletions + other.deletions,
            self.reference_length + other.reference_length,
        )

    def as_dict(self, prefix: str) -> dict[str, float | int]:
        return {
            prefix: self.rate,
            f"{prefix}_sub": self.substitutions,
            f"{prefix}_ins": self.insertions,
            f"{prefix}_del": self.deletions,
            f"{prefix}_ref": self.reference_length,
        }


def align_counts(ref: Sequence[str], hyp: Sequence[str]) -> ErrorCounts:
    """Substitutions, insertions and deletions of a minimum-edit (Levenshtein) alignment of ``hyp`` to
    ``ref`` (sequences of words or characters).

    The alignment is rapidfuzz's (C++, bit-parallel: linear-time for the short sequences of speech
    recognition, fast on long texts), the one jiwer uses too, so S/I/D counts agree with jiwer's; where
    several alignments have the same cost, the split between the three kinds is the one it reports.
    """
    ops = Levenshtein.editops(ref, hyp)
    counts = {"replace": 0, "insert": 0, "delete": 0}
    for op in ops:
        counts[op.tag] += 1
    return ErrorCounts(counts["replace"], counts["insert"], counts["delete"], len(ref))


def word_errors(ref: str, hyp: str) -> ErrorCounts:
    """Word-level counts of the normalised texts (:func:`normalize`)."""
    return align_counts(normalize(ref).split(), normalize(hyp).split())


def char_errors(ref: str, hyp: str) -> ErrorCounts:
    """Characters of the normalised text, spaces included (the usual CER)."""
    return align_counts(list(normalize(ref)), list(normalize(hyp)))
