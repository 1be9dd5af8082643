"""A dialogue's turns: the script's (`script_turns`), where the recogniser heard each of them (`place_turns`), and
the error rate that does not care which voice label the hypothesis gave whom (`cp_word_errors`, concatenated
minimum-permutation WER, as dialogue evaluations report it).

A turn is a run of the script between speaker tags, consecutive same-speaker runs joined. The recogniser's words
are lined up with the script's words by the same alignment the word error rate counts (jiwer's); a heard word
matched to a script word (the same word, or a substitution) belongs to that word's turn, and a turn none of whose
words was heard is a dropped (swallowed) turn. A turn's span runs from its first heard word's start to its last
heard word's end, so its audio can be cut out and judged on its own (its voice, its pace).

A turn's voice is judged against every speaker's voice (`turn_voices`): closest to its own speaker's is right,
and its similarity to its own minus that to the closest other speaker's is negative when voices are swapped.
Within one generation a voice may drift (`drift`: a speaker's first turn against its last); across calls with the
same script, prompt and settings at different seeds it may wander (`voice_spread`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

import jiwer
import numpy as np

from dia_tpu.evaluation.text import Errors, spoken_text, word_errors
from dia_tpu.listen.asr import TimedWord
from dia_tpu.listen.speaker import similarity

_SPEAKER = re.compile(r"\[(S\d+)\]")


@dataclass(frozen=True)
class Turn:
    speaker: str  # "S1", "S2", ...
    text: str  # what the turn says aloud (tags and non-verbal cues removed)


@dataclass(frozen=True)
class PlacedTurn:
    """A script turn and where it was heard: its words heard (matched to its script words) and their span."""

    turn: Turn
    heard: int  # script words of this turn matched by a heard word
    start: float | None  # seconds; None when none of its words was heard
    end: float | None

    @property
    def found(self) -> bool:
        return self.heard > 0


def script_turns(script: str) -> list[Turn]:
    """The speaker turns of a script; text before the first tag is the first speaker's (S1 when untagged)."""
    parts = _SPEAKER.split(script)
    turns: list[Turn] = []
    speaker = "S1"
    for i, part in enumerate(parts):
        if i % 2 == 1:
            speaker = part
            continue
        text = spoken_text(part)
        if not text:
            continue
        if turns and turns[-1].speaker == speaker:
            turns[-1] = Turn(speaker, f"{turns[-1].text} {text}")
        else:
            turns.append(Turn(speaker, text))
    return turns


def cp_word_errors(
    reference: list[Turn], hypothesis: list[Turn], normalise: Callable[[str], str] = lambda t: t
) -> Errors:
    """Concatenated minimum-permutation word errors: each speaker's words joined on either side, the hypothesis's
    speaker labels mapped to the reference's by the permutation with the fewest errors (a label either side lacks
    speaks nothing), errors summed over speakers."""

    def joined(turns: list[Turn]) -> dict[str, str]:
        out: dict[str, list[str]] = {}
        for turn in turns:
            out.setdefault(turn.speaker, []).append(normalise(turn.text))
        return {speaker: " ".join(" ".join(texts).split()) for speaker, texts in out.items()}

    ref, hyp = joined(reference), joined(hypothesis)
    ref_labels, hyp_labels = list(ref), list(hyp)
    size = max(len(ref_labels), len(hyp_labels))
    ref_labels += [None] * (size - len(ref_labels))
    hyp_labels += [None] * (size - len(hyp_labels))
    best = None
    for order in itertools.permutations(hyp_labels):
        total = Errors(0, 0)
        for r, h in zip(ref_labels, order, strict=True):
            total = total + word_errors(ref.get(r, ""), hyp.get(h, ""))
        if best is None or total.errors < best.errors:
            best = total
    return best if best is not None else Errors(0, 0)


def place_turns(turns: list[Turn], words: list[TimedWord], normalise: Callable[[str], str]) -> list[PlacedTurn]:
    """Where each script turn was heard, from the recogniser's timed words (`normalise`: the recogniser's own)."""
    script_words, owner = [], []
    for index, turn in enumerate(turns):
        for word in normalise(turn.text).split():
            script_words.append(word)
            owner.append(index)
    heard_words, spans = [], []
    for word in words:
        for piece in normalise(word.text).split():
            heard_words.append(piece)
            spans.append((word.start, word.end))
    matched: list[list[int]] = [[] for _ in turns]  # per turn: the heard words matched to its words
    if script_words and heard_words:
        alignment = jiwer.process_words(" ".join(script_words), " ".join(heard_words)).alignments[0]
        for chunk in alignment:
            if chunk.type in ("equal", "substitute"):
                for offset in range(chunk.ref_end_idx - chunk.ref_start_idx):
                    matched[owner[chunk.ref_start_idx + offset]].append(chunk.hyp_start_idx + offset)
    placed = []
    for turn, heard in zip(turns, matched, strict=True):
        if heard:
            placed.append(PlacedTurn(turn, len(heard), spans[min(heard)][0], spans[max(heard)][1]))
        else:
            placed.append(PlacedTurn(turn, 0, None, None))
    return placed


def turn_audio(wave: np.ndarray, rate: int, placed: PlacedTurn, margin: float = 0.05) -> np.ndarray | None:
    """A found turn's audio, its span widened by `margin` seconds either side; None for a turn not found."""
    if not placed.found:
        return None
    start = max(0, round((placed.start - margin) * rate))
    return wave[start : round((placed.end + margin) * rate)]


@dataclass(frozen=True)
class TurnVoices:
    """Each turn's voice against the speakers': similarity to its own speaker's voice and to the closest other
    speaker's, and whose voice it is closest to (None for a turn not found)."""

    own: list[float | None]
    other: list[float | None]
    closest: list[str | None]

    def figures(self, speakers: list[str]) -> dict[str, float | None]:
        """turn_voice_accuracy (turns closest to their own speaker's voice, of all the script's turns: a swallowed
        turn is a wrong one), similarity_own and similarity_other (means over the found turns) and
        similarity_margin, their difference (the published dialogue evaluations' similarity minus
        dis-similarity: negative when the voices are swapped)."""
        found = [i for i, own in enumerate(self.own) if own is not None]
        right = sum(self.closest[i] == speakers[i] for i in found)
        out = {"turn_voice_accuracy": right / len(speakers) if speakers else None}
        own = [self.own[i] for i in found]
        other = [self.other[i] for i in found if self.other[i] is not None]
        out["similarity_own"] = float(np.mean(own)) if own else None
        out["similarity_other"] = float(np.mean(other)) if other else None
        margins = [self.own[i] - self.other[i] for i in found if self.other[i] is not None]
        out["similarity_margin"] = float(np.mean(margins)) if margins else None
        return out


def turn_voices(embeddings: list[np.ndarray | None], speakers: list[str], voices: dict[str, np.ndarray]) -> TurnVoices:
    """Turn embeddings (None: not found) against each speaker's voice embedding (a prompt's or reference's)."""
    own, other, closest = [], [], []
    names = list(voices)
    for embedding, speaker in zip(embeddings, speakers, strict=True):
        if embedding is None or speaker not in voices:
            own.append(None)
            other.append(None)
            closest.append(None)
            continue
        scores = {name: float(similarity(embedding, voices[name])[0]) for name in names}
        own.append(scores[speaker])
        others = [scores[name] for name in names if name != speaker]
        other.append(max(others) if others else None)
        closest.append(max(scores, key=scores.get))
    return TurnVoices(own, other, closest)


def drift(embeddings: list[np.ndarray | None], speakers: list[str]) -> float | None:
    """How far a voice moves within one generation: the similarity of each speaker's first and last found turns,
    averaged over the speakers with two or more found (1: unchanged); None when no speaker has two."""
    found: dict[str, list[np.ndarray]] = {}
    for embedding, speaker in zip(embeddings, speakers, strict=True):
        if embedding is not None:
            found.setdefault(speaker, []).append(embedding)
    pairs = [(turns[0], turns[-1]) for turns in found.values() if len(turns) > 1]
    return float(np.mean([similarity(a, b)[0] for a, b in pairs])) if pairs else None


def voice_spread(embeddings: np.ndarray) -> float:
    """The spread of K embeddings of one voice (the same script and prompt at K seeds): the mean cosine distance
    (1 - similarity) over all pairs; 0 when every call gives the same voice."""
    count = len(embeddings)
    if count < 2:
        raise ValueError(f"a voice's spread needs two or more calls, got {count}")
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-9)
    cos = unit @ unit.T
    return float((1 - cos[np.triu_indices(count, 1)]).mean())
