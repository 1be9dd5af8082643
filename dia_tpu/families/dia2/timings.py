"""Word timings for Dia2's prepared rows: a transcript's words, as generation splits a script, with the times an
aligner found (`dia_tpu.listen.align`), or a timing file's words with its speakers (moshi-finetune's form); each
checked and put in codec frames as a row's `words` hold them (`dia_tpu.families.dia2.data`).

Whatever cannot be timed raises `Untimed` with the reason prepare counts: nothing to say, a word outside the clip,
words out of order, one speaker's word starting before the other's has ended, more than two speakers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

from dia_tpu.data.clips import Segment
from dia_tpu.families.dia2.data import SPEAKER_TAGS
from dia_tpu.listen.align import spoken_words
from dia_tpu.listen.asr import TimedWord

SPEAKER_OF = {tag: number for number, tag in SPEAKER_TAGS.items()}
_OTHER_TAG = re.compile(r"\[[^\]]*\]|<[^>]*>")


class Untimed(ValueError):
    """A recording whose words cannot be timed; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class Said:
    text: str  # as the transcript writes it (generation tokenizes this)
    start: float  # seconds
    end: float
    speaker: int  # 1 or 2


def script_words(text: str) -> list[tuple[str, int, list[str]]]:
    """Each word of a transcript as generation splits a script (on spaces, `[S1]`/`[S2]` naming the speaker of
    the words after them; 1 before any), with what an aligner hears of it (its words normalised: "camp-site" is
    two, a lone dash none)."""
    out, speaker = [], 1
    for token in text.replace("\u2019", "'").split():
        if token in SPEAKER_OF:
            speaker = SPEAKER_OF[token]
        elif not _OTHER_TAG.fullmatch(token):
            out.append((token, speaker, spoken_words(token)))
    return out


def aligned(text: str, align: Callable[[list[str]], list[TimedWord]]) -> list[Said]:
    """The transcript's words timed by `align` (an aligner on the recording: `Unaligned` passes through). A word
    the aligner hears nothing of (punctuation on its own) joins the word before it, or the one after at the start."""
    words = script_words(text)
    heard = [piece for _, _, pieces in words for piece in pieces]
    if not heard:
        raise Untimed("no words to say")
    timed = align(heard)
    said, at, leading = [], 0, []
    for token, speaker, pieces in words:
        if not pieces:
            if said:
                said[-1] = dataclasses.replace(said[-1], text=f"{said[-1].text} {token}")
            else:
                leading.append(token)
            continue
        first, last = timed[at], timed[at + len(pieces) - 1]
        at += len(pieces)
        said.append(Said(" ".join([*leading, token]), first.start, last.end, speaker))
        leading = []
    return said


def from_segments(segments: Sequence[Segment]) -> list[Said]:
    """A timing file's words (moshi-finetune's alignments): the first speaker it names is 1, the second 2."""
    names = list(dict.fromkeys(s.speaker for s in segments))
    if len(names) > 2:
        raise Untimed(f"more than two speakers in the timings ({', '.join(map(repr, names[:4]))})")
    number = {name: k + 1 for k, name in enumerate(names)}
    return [Said(s.text, s.start, s.end, number[s.speaker]) for s in segments if s.text.strip()]


def in_frames(said: Sequence[Said], seconds: float, frame_rate: float) -> list[dict]:
    """The words as a row holds them, in frames at `frame_rate` of a clip of `seconds`, after checking them."""
    slack, frames = 1 / frame_rate, round(seconds * frame_rate)
    words, previous = [], None
    for word in said:
        if word.start < 0 or word.end > seconds + slack:
            raise Untimed(
                f"a word outside the clip: {word.text!r} at {word.start:.2f}-{word.end:.2f} s, the clip {seconds:.2f} s"
            )
        if previous is not None and word.start < previous.start:
            raise Untimed(f"words out of order: {word.text!r} starts before the word before it")
        if previous is not None and word.speaker != previous.speaker and word.start < previous.end - slack:
            raise Untimed(f"overlapping turns: {word.text!r} starts before {previous.text!r} ends")
        start = min(round(word.start * frame_rate), max(frames - 1, 0))
        end = min(max(round(word.end * frame_rate), start + 1), frames)
        words.append({"word": word.text, "start": start, "end": end, "speaker": word.speaker})
        previous = word
    return words
