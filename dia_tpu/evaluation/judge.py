"""One row of figures per generated utterance, and a summary per model.

A row holds the signal measures and their named problems (`dia_tpu.evaluation.signal`), the recogniser's
transcript with its word and character errors against what the script says aloud, and the speaker similarity
to the voice prompt and to the reference clip. Error rates are pooled (errors over reference words across all
utterances), as ASR evaluations report them; similarities are averaged over the utterances that have them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from dia_tpu.evaluation.signal import expected_seconds, measure, problems
from dia_tpu.evaluation.text import char_errors, spoken_text, word_errors
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


def judge(
    prompts: list[Prompt],
    waves: list[np.ndarray],
    codes: list[np.ndarray | None],
    ended: list[bool],
    rate: int,
    judges: Judges,
) -> list[dict]:
    """Rows for generated `waves` of `prompts`, all audio (theirs, references, voices) at `rate`."""
    rows = []
    for prompt, wave, frames, end in zip(prompts, waves, codes, ended, strict=True):
        if prompt.reference is not None:
            seconds = len(prompt.reference) / rate
        else:
            seconds = expected_seconds(prompt.text, prompt.chars_per_second)
        m = measure(wave, rate, ended=end, reference_seconds=seconds, codes=frames)
        rows.append({"id": prompt.id, "text": prompt.text, **m.to_dict(), "problems": problems(m)})
    if judges.recogniser is not None:
        asr = judges.recogniser
        for row, heard in zip(rows, asr.transcribe(waves, rate), strict=True):
            said, got = asr.normalise(spoken_text(row["text"])), asr.normalise(heard)
            words, chars = word_errors(said, got), char_errors(said, got)
            row.update(
                transcript=heard,
                word_errors=words.errors,
                words=words.length,
                # Deletions count what truncated speech lost, insertions what babbling added.
                substitutions=words.substitutions,
                deletions=words.deletions,
                insertions=words.insertions,
                wer=words.rate,
                char_errors=chars.errors,
                chars=chars.length,
                cer=chars.rate,
            )
    if judges.speaker is not None:
        _similarities(rows, prompts, waves, rate, judges.speaker)
    if judges.quality is not None:
        for row, mos in zip(rows, judges.quality.score(waves, rate), strict=True):
            if mos is not None:
                row["mos"] = mos
    return rows


def _similarities(
    rows: list[dict], prompts: list[Prompt], waves: list[np.ndarray], rate: int, encoder: SpeakerEncoder
) -> None:
    out = encoder.embed(waves, rate)
    for key, attribute in (("similarity_prompt", "voice"), ("similarity_reference", "reference")):
        have = [i for i, p in enumerate(prompts) if getattr(p, attribute) is not None]
        if not have:
            continue
        theirs = encoder.embed([getattr(prompts[i], attribute) for i in have], rate)
        for i, value in zip(have, similarity(out[have], theirs), strict=True):
            # An empty or silent output has no voice: its similarity is 0, not a number from noise.
            rows[i][key] = float(value) if len(waves[i]) and out[i].any() else 0.0


# What an evaluation's figures are made of, summed over utterances: with several processes each sums its share
# and the shares are added, so the pooled figures come out the same as from one process.
SUMS = (
    "utterances",
    "word_errors",
    "words",
    "char_errors",
    "chars",
    "similarity_prompt",
    "prompted",
    "similarity_reference",
    "referenced",
    "mos",
    "scored",
    "ended",
    "with_problems",
)
# Each averaged figure and the count it is averaged over.
_MEANS = (("similarity_prompt", "prompted"), ("similarity_reference", "referenced"), ("mos", "scored"))


def sums_of(rows: list[dict]) -> dict[str, float]:
    """`SUMS` of some rows."""
    sums = dict.fromkeys(SUMS, 0.0)
    for row in rows:
        sums["utterances"] += 1
        for key in ("word_errors", "words", "char_errors", "chars"):
            sums[key] += row.get(key, 0)
        for key, count in _MEANS:
            if key in row:
                sums[key] += row[key]
                sums[count] += 1
        sums["ended"] += bool(row["ended"])
        sums["with_problems"] += bool(row["problems"])
    return sums


def figures_of(sums: dict[str, float]) -> dict[str, float]:
    """Summed rows as figures: pooled wer and cer (errors over all reference words and characters), mean
    similarities and MOS, speaker_similarity (to the reference where there is one, else to the voice prompt),
    and the shares ended and with a problem."""
    n = max(sums["utterances"], 1.0)
    out = {"utterances": sums["utterances"], "ended": sums["ended"] / n, "with_problems": sums["with_problems"] / n}
    if sums["words"]:
        out["wer"] = sums["word_errors"] / sums["words"]
        out["cer"] = sums["char_errors"] / max(sums["chars"], 1.0)
    for key, count in _MEANS:
        if sums[count]:
            out[key] = sums[key] / sums[count]
    speaker = out.get("similarity_reference", out.get("similarity_prompt"))
    if speaker is not None:
        out["speaker_similarity"] = speaker
    return out


# The automatic evaluation's figures as lines and cards name them: (metric under audio/, name, format).
AUDIO_FIGURES = (
    ("wer", "WER", ".3f"),
    ("cer", "CER", ".3f"),
    ("speaker_similarity", "speaker similarity", ".3f"),
    ("mos", "MOS", ".2f"),
    ("ended", "ended", ".0%"),
    ("with_problems", "with problems", ".0%"),
)


def summarise(rows: list[dict]) -> dict:
    """A model's figures (`figures_of`), the median length against the reference, and how many utterances had
    each problem."""
    summary = {**figures_of(sums_of(rows)), "utterances": len(rows)}
    ratios = [r["seconds"] / r["reference_seconds"] for r in rows if r["reference_seconds"]]
    summary["length_ratio"] = float(np.median(ratios)) if ratios else None
    summary["problems"] = dict(sorted(Counter(p for r in rows for p in r["problems"]).items()))
    return summary
