"""The recogniser's word times in a transcribe output: each word in the recording's time as the transcript spells
it, and a segment's words as the timing file beside it holds them (moshi-finetune's alignments), which `prepare`
for Dia2 reads instead of aligning the text."""

from __future__ import annotations

from dia_tpu.listen.asr import TimedWord
from dia_tpu.transcribe.regions import Segment
from dia_tpu.transcribe.spoken import spoken


def recognised_words(words: list[TimedWord], offset: float, normalize: str) -> list[TimedWord]:
    """The recogniser's words in the recording's time (`offset`: where the region starts), as the transcript
    writes them: numbers spoken (several words sharing the number's span evenly) where asked."""
    out = []
    for word in words:
        parts = (spoken(word.text) if normalize == "numbers" else word.text).replace("|", " ").split()
        step = (word.end - word.start) / max(len(parts), 1)
        out += [
            TimedWord(part, offset + word.start + k * step, offset + word.start + (k + 1) * step)
            for k, part in enumerate(parts)
        ]
    return out


def alignments(segment: Segment, speakers: list[int]) -> list | None:
    """A segment's words as moshi-finetune's alignments, [word, [start, end], speaker] with times from the start of
    the segment's file and speakers named by the segment's tags (S1, S2); None unless every word has its time."""
    regions = [r for r in segment.regions if r.text]
    if any(r.words is None for r in regions):
        return None

    def inside(t: float) -> float:
        return round(min(max(t - segment.start, 0.0), segment.seconds), 3)

    return [
        [w.text, [inside(w.start), inside(w.end)], f"S{speakers.index(r.speaker) + 1}"]
        for r in regions
        for w in r.words
    ]
