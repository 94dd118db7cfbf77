"""Text normalisation and error rates (WER / CER with substitution, insertion, deletion counts).

Normalisation (applied to reference and hypothesis alike, documented in the README):
lower-case; Unicode NFKC; every character that is not a letter, digit, apostrophe or space becomes a
space (so "don't" stays one word, "well-known" becomes two); runs of spaces collapse. LRS3 transcripts
are already in this form, so scores on LRS3 match the published protocol.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

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


def align_counts(ref: list[str], hyp: list[str]) -> ErrorCounts:
    """Levenshtein alignment; ties prefer substitution, then deletion, then insertion."""
    n, m = len(ref), len(hyp)
    # dp over rows of (cost, subs, ins, dels)
    prev = [(j, 0, j, 0) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, 0, i)]
        for j in range(1, m + 1):
            if ref[i - 1] == hyp[j - 1]:
                best = prev[j - 1]
            else:
                c, s, ins, d = prev[j - 1]
                sub = (c + 1, s + 1, ins, d)
                c, s, ins, d = prev[j]
                dele = (c + 1, s, ins, d + 1)
                c, s, ins, d = cur[j - 1]
                inse = (c + 1, s, ins + 1, d)
                best = min(sub, dele, inse, key=lambda t: t[0])
            cur.append(best)
        prev = cur
    _, s, ins, d = prev[m]
    return ErrorCounts(s, ins, d, n)


def word_errors(ref: str, hyp: str) -> ErrorCounts:
    return align_counts(normalize(ref).split(), normalize(hyp).split())


def char_errors(ref: str, hyp: str) -> ErrorCounts:
    """Characters of the normalised text, spaces included (the usual CER)."""
    return align_counts(list(normalize(ref)), list(normalize(hyp)))
