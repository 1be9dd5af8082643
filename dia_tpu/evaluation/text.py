"""What a recogniser should have heard, and how far its transcript is from it: word and character error rates.

A script's tags are not speech: speaker and language tags (`[S1]`, `[de]`) and non-verbal tags (`(laughs)`,
`(coughs)`) are removed before comparing. What is left is normalised by the recogniser's own normaliser
(Whisper's English normaliser for Whisper; lower case without punctuation otherwise), so spelling and
punctuation choices do not count as errors.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_TAG = re.compile(r"\[[A-Za-z][A-Za-z0-9_-]*\]")
# Dia's non-verbal cues: a parenthesised word or two, e.g. (laughs), (clears throat).
_NON_VERBAL = re.compile(r"\(\s*[A-Za-z]+(?:\s+[A-Za-z]+)?\s*\)")
_NOT_WORD = re.compile(r"[^\w\s']")


def spoken_text(script: str) -> str:
    """The words a script says aloud: tags and non-verbal cues removed, spaces collapsed."""
    return " ".join(_NON_VERBAL.sub(" ", _TAG.sub(" ", script)).split())


def basic_normalise(text: str) -> str:
    """Lower case, accents kept, punctuation (but apostrophes inside words) removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    words = _NOT_WORD.sub(" ", text).split()
    return " ".join(word.strip("'") for word in words if word.strip("'"))


@dataclass(frozen=True)
class Errors:
    """Edit-distance errors against a reference: (errors, reference length), summed over utterances first."""

    errors: int
    length: int

    @property
    def rate(self) -> float:
        """Errors per reference unit; an empty reference scores 0 when the hypothesis is empty too, else 1."""
        if self.length == 0:
            return float(self.errors > 0)
        return self.errors / self.length

    def __add__(self, other: Errors) -> Errors:
        return Errors(self.errors + other.errors, self.length + other.length)


def edit_distance(reference: list, hypothesis: list) -> int:
    """Levenshtein distance: substitutions, deletions and insertions, each costing 1."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def word_errors(reference: str, hypothesis: str) -> Errors:
    """Word errors of two normalised texts."""
    ref, hyp = reference.split(), hypothesis.split()
    return Errors(edit_distance(ref, hyp), len(ref))


def char_errors(reference: str, hypothesis: str) -> Errors:
    """Character errors of two normalised texts, spaces between words counted once."""
    ref, hyp = " ".join(reference.split()), " ".join(hypothesis.split())
    return Errors(edit_distance(list(ref), list(hyp)), len(ref))
