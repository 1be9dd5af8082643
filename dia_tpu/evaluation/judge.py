"""One row of figures per generated utterance, and a summary per model.

A row holds the signal measures and their named problems (`dia_tpu.evaluation.signal`), the recogniser's
transcript with its word and character errors against what the script says aloud, and the speaker similarity
to the voice prompt and to the reference clip. Error rates are pooled (errors over reference words across all
utterances), as ASR evaluations report them; similarities are averaged over the utterances that have them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields

import numpy as np

from dia_tpu.evaluation.signal import SignalMeasures, expected_seconds, measure, problems
from dia_tpu.evaluation.text import Errors, char_errors, spoken_text, word_errors
from dia_tpu.listen.judges import Judges
from dia_tpu.listen.speaker import SpeakerEncoder, similarity

# Characters per second of spoken words when a prompt has no reference clip: English read speech runs at
# about 14 (a run's own data gives its speakers' pace instead).
DEFAULT_CHARS_PER_SECOND = 14.0


@dataclass
class Prompt:
    """What to say, and what to compare the result with."""

    id: str
    text: str  # the script, with speaker (and language, non-verbal) tags
    reference: np.ndarray | None = None  # a recording of this text (mono), for its length and its voice
    voice: np.ndarray | None = None  # the voice prompt's audio (mono), when cloning
    chars_per_second: float = DEFAULT_CHARS_PER_SECOND  # the speaker's pace, for an expected length


@dataclass
class Heard:
    """What the recogniser heard, and its errors against what the script says aloud."""

    transcript: str
    words: Errors
    chars: Errors

    def to_dict(self) -> dict:
        w, c = self.words, self.chars
        return {
            "transcript": self.transcript,
            "word_errors": w.errors,
            "words": w.length,
            # Deletions count what truncated speech lost, insertions what babbling added.
            "substitutions": w.substitutions,
            "deletions": w.deletions,
            "insertions": w.insertions,
            "wer": w.rate,
            "char_errors": c.errors,
            "chars": c.length,
            "cer": c.rate,
        }


@dataclass
class Row:
    """The figures of one generated utterance; a judge that did not run leaves its figures None."""

    id: str
    text: str
    signal: SignalMeasures
    problems: list[str]
    heard: Heard | None = None
    similarity_prompt: float | None = None
    similarity_reference: float | None = None
    mos: float | None = None
    mel_distance: float | None = None  # a codec round trip's, against the original

    def to_dict(self) -> dict:
        """The row as `rows.jsonl` holds it: one flat object, without the figures nobody measured."""
        out = {"id": self.id, "text": self.text, **self.signal.to_dict(), "problems": self.problems}
        if self.heard is not None:
            out.update(self.heard.to_dict())
        for key in ("similarity_prompt", "similarity_reference", "mos", "mel_distance"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def judge(
    prompts: list[Prompt],
    waves: list[np.ndarray],
    codes: list[np.ndarray | None],
    ended: list[bool],
    rate: int,
    judges: Judges,
) -> list[Row]:
    """Rows for generated `waves` of `prompts`, all audio (theirs, references, voices) at `rate`."""
    rows = []
    for prompt, wave, frames, end in zip(prompts, waves, codes, ended, strict=True):
        if prompt.reference is not None:
            seconds = len(prompt.reference) / rate
        else:
            seconds = expected_seconds(prompt.text, prompt.chars_per_second)
        m = measure(wave, rate, ended=end, reference_seconds=seconds, codes=frames)
        rows.append(Row(prompt.id, prompt.text, m, problems(m)))
    if judges.recogniser is not None:
        asr = judges.recogniser
        for row, heard in zip(rows, asr.transcribe(waves, rate), strict=True):
            said, got = asr.normalise(spoken_text(row.text)), asr.normalise(heard)
            row.heard = Heard(heard, word_errors(said, got), char_errors(said, got))
    if judges.speaker is not None:
        _similarities(rows, prompts, waves, rate, judges.speaker)
    if judges.quality is not None:
        for row, mos in zip(rows, judges.quality.score(waves, rate), strict=True):
            row.mos = mos
    return rows


def _similarities(
    rows: list[Row], prompts: list[Prompt], waves: list[np.ndarray], rate: int, encoder: SpeakerEncoder
) -> None:
    out = encoder.embed(waves, rate)
    for key, attribute in (("similarity_prompt", "voice"), ("similarity_reference", "reference")):
        have = [i for i, p in enumerate(prompts) if getattr(p, attribute) is not None]
        if not have:
            continue
        theirs = encoder.embed([getattr(prompts[i], attribute) for i in have], rate)
        for i, value in zip(have, similarity(out[have], theirs), strict=True):
            # An empty or silent output has no voice: its similarity is 0, not a number from noise.
            setattr(rows[i], key, float(value) if len(waves[i]) and out[i].any() else 0.0)


@dataclass
class Sums:
    """What an evaluation's figures are made of, summed over utterances: with several processes each sums its
    share and the shares are added (`values`, `from_values`), so the pooled figures come out the same as from one
    process."""

    utterances: float = 0.0
    word_errors: float = 0.0
    words: float = 0.0
    substitutions: float = 0.0
    deletions: float = 0.0
    insertions: float = 0.0
    char_errors: float = 0.0
    chars: float = 0.0
    similarity_prompt: float = 0.0
    prompted: float = 0.0
    similarity_reference: float = 0.0
    referenced: float = 0.0
    mos: float = 0.0
    scored: float = 0.0
    ended: float = 0.0
    with_problems: float = 0.0

    @classmethod
    def of(cls, rows: list[Row]) -> Sums:
        sums = cls(utterances=len(rows))
        for row in rows:
            if row.heard is not None:
                w, c = row.heard.words, row.heard.chars
                sums.word_errors += w.errors
                sums.words += w.length
                sums.substitutions += w.substitutions
                sums.deletions += w.deletions
                sums.insertions += w.insertions
                sums.char_errors += c.errors
                sums.chars += c.length
            for key, count in _MEANS:
                if (value := getattr(row, key)) is not None:
                    setattr(sums, key, getattr(sums, key) + value)
                    setattr(sums, count, getattr(sums, count) + 1)
            sums.ended += bool(row.signal.ended)
            sums.with_problems += bool(row.problems)
        return sums

    def values(self) -> list[float]:
        return [float(getattr(self, f.name)) for f in fields(self)]

    @classmethod
    def from_values(cls, values: list[float]) -> Sums:
        return cls(*values)

    def figures(self) -> dict[str, float]:
        """Pooled wer and cer (errors over all reference words and characters) and the substitution, deletion
        and insertion rates they are made of, mean similarities and MOS, speaker_similarity (to the reference
        where there is one, else to the voice prompt), and the shares ended and with a problem."""
        n = max(self.utterances, 1.0)
        out = {"utterances": self.utterances, "ended": self.ended / n, "with_problems": self.with_problems / n}
        if self.words:
            out["wer"] = self.word_errors / self.words
            out["cer"] = self.char_errors / max(self.chars, 1.0)
            for kind in ("substitution", "deletion", "insertion"):
                out[f"{kind}_rate"] = getattr(self, f"{kind}s") / self.words
        for key, count in _MEANS:
            if getattr(self, count):
                out[key] = getattr(self, key) / getattr(self, count)
        speaker = out.get("similarity_reference", out.get("similarity_prompt"))
        if speaker is not None:
            out["speaker_similarity"] = speaker
        return out


# Each averaged figure and the count it is averaged over.
_MEANS = (("similarity_prompt", "prompted"), ("similarity_reference", "referenced"), ("mos", "scored"))


# The automatic evaluation's figures as lines and cards name them: (metric under audio/, name, format).
AUDIO_FIGURES = (
    ("wer", "WER", ".3f"),
    ("cer", "CER", ".3f"),
    ("speaker_similarity", "speaker similarity", ".3f"),
    ("mos", "MOS", ".2f"),
    ("ended", "ended", ".0%"),
    ("with_problems", "with problems", ".0%"),
)


def summarise(rows: list[Row]) -> dict:
    """A model's figures (`Sums.figures`), the median length against the reference, and how many utterances had
    each problem."""
    summary = {**Sums.of(rows).figures(), "utterances": len(rows)}
    ratios = [r.signal.seconds / r.signal.reference_seconds for r in rows if r.signal.reference_seconds]
    summary["length_ratio"] = float(np.median(ratios)) if ratios else None
    summary["problems"] = dict(sorted(Counter(p for r in rows for p in r.problems).items()))
    return summary
