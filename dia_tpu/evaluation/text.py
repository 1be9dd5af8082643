"""What a recogniser should have heard, and how far its transcript is from it: word and character error rates
(jiwer counts them).

A script's tags are not speech: speaker and language tags (`[S1]`, `[de]`) and non-verbal tags (`(laughs)`,
`(coughs)`) are removed before comparing. What is left is normalised by the recogniser's own normaliser
(Whisper's English normaliser for Whisper; lower case without punctuation otherwise), so spelling and
punctuation choices do not count as errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import jiwer

_TAG = re.compile(r"\[[A-Za-z][A-Za-z0-9_-]*\]")
# Dia's non-verbal cues: a parenthesised word or two, e.g. (laughs), (clears throat).
_NON_VERBAL = re.compile(r"\(\s*[A-Za-z]+(?:\s+[A-Za-z]+)?\s*\)")


def spoken_text(script: str) -> str:
    """The words a script says aloud: tags and non-verbal cues removed, spaces collapsed."""
    return " ".join(_NON_VERBAL.sub(" ", _TAG.sub(" ", script)).split())


@dataclass(frozen=True)
class Errors:
    """Edit-distance errors against a reference: (errors, reference length), summed over utterances first.

    The errors split into substitutions, deletions and insertions (jiwer's alignment): deletions are what
    truncated speech loses, insertions what babbling adds. They take no part in comparing two `Errors`."""

    errors: int
    length: int
    substitutions: int = field(default=0, compare=False)
    deletions: int = field(default=0, compare=False)
    insertions: int = field(default=0, compare=False)

    @property
    def rate(self) -> float:
        """Errors per reference unit; an empty reference scores 0 when the hypothesis is empty too, else 1."""
        if self.length == 0:
            return float(self.errors > 0)
        return self.errors / self.length

    def __add__(self, other: Errors) -> Errors:
        return Errors(
            self.errors + other.errors,
            self.length + other.length,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )


def _errors(found: jiwer.WordOutput | jiwer.CharacterOutput, length: int) -> Errors:
    s, d, i = found.substitutions, found.deletions, found.insertions
    return Errors(s + d + i, length, s, d, i)


def word_errors(reference: str, hypothesis: str) -> Errors:
    """Word errors of two normalised texts."""
    return _errors(jiwer.process_words(reference, hypothesis), len(reference.split()))


def char_errors(reference: str, hypothesis: str) -> Errors:
    """Character errors of two normalised texts, spaces between words counted once."""
    ref, hyp = " ".join(reference.split()), " ".join(hypothesis.split())
    return _errors(jiwer.process_characters(ref, hyp), len(ref))
