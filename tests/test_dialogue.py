"""A dialogue's turns: read from its script, placed in the audio by the recogniser's timed words, and its
concatenated minimum-permutation word errors (which do not care how the hypothesis labelled its voices)."""

from __future__ import annotations

import numpy as np
import pytest

from dia_tpu.evaluation.dialogue import (
    Turn,
    cp_word_errors,
    drift,
    place_turns,
    script_turns,
    turn_voices,
    voice_spread,
)
from dia_tpu.evaluation.text import word_errors
from dia_tpu.listen.asr import TimedWord, basic_normalise

SCRIPT = "[S1] Hello there, friend. [S2] Yes, I am here! (laughs) [S2] Right here. [S1] Good bye."


def test_a_scripts_turns_join_a_speakers_consecutive_lines_and_drop_tags():
    assert script_turns(SCRIPT) == [
        Turn("S1", "Hello there, friend."),
        Turn("S2", "Yes, I am here! Right here."),
        Turn("S1", "Good bye."),
    ]
    assert script_turns("Untagged words.") == [Turn("S1", "Untagged words.")]


def test_cp_wer_maps_the_hypothesis_voices_to_the_scripts_by_the_best_permutation():
    reference = script_turns(SCRIPT)
    swapped = [Turn("S2" if t.speaker == "S1" else "S1", t.text) for t in reference]
    assert cp_word_errors(reference, swapped, basic_normalise).errors == 0
    # Whatever order the hypothesis's labels first appear in.
    assert cp_word_errors(reference, [swapped[1], swapped[0], swapped[2]], basic_normalise).errors == 0

    # Compared label for label instead, the same hypothesis is mostly errors: the permutation is what makes it 0.
    def words_of(turns, speaker):
        return basic_normalise(" ".join(t.text for t in turns if t.speaker == speaker))

    by_label = sum(word_errors(words_of(reference, s), words_of(swapped, s)).errors for s in ("S1", "S2"))
    assert by_label >= 9
    # A speaker's turns left out are deletions; a voice the script does not have, insertions.
    dropped = cp_word_errors(reference, [t for t in reference if t.speaker == "S1"], basic_normalise)
    assert (dropped.errors, dropped.deletions, dropped.length) == (6, 6, 11)
    extra = cp_word_errors(reference, [*reference, Turn("S3", "who is this")], basic_normalise)
    assert (extra.errors, extra.insertions) == (3, 3)


def timed(words: str, start: float = 0.0, step: float = 0.3) -> list[TimedWord]:
    return [TimedWord(w, start + i * step, start + (i + 1) * step) for i, w in enumerate(words.split())]


def test_turns_are_placed_where_their_words_were_heard_and_a_swallowed_turn_is_not_found():
    turns = script_turns(SCRIPT)
    heard = timed("hello there friend", 0.0) + timed("yes i am here right here", 1.2) + timed("good bye", 3.4)
    placed = place_turns(turns, heard, basic_normalise)
    assert [p.found for p in placed] == [True, True, True]
    assert [x for p in placed for x in (p.start, p.end)] == pytest.approx([0.0, 0.9, 1.2, 3.0, 3.4, 4.0])
    # Misheard words still place their turn; the second speaker's turn swallowed is not found.
    misheard = timed("yellow their friend", 0.0) + timed("good bye", 1.0)
    placed = place_turns(turns, misheard, basic_normalise)
    assert [p.found for p in placed] == [True, False, True] and placed[0].heard == 3
    assert (placed[2].start, placed[2].end) == pytest.approx((1.0, 1.6))
    assert not any(p.found for p in place_turns(turns, [], basic_normalise))


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


VOICES = {"S1": unit(1, 0, 0), "S2": unit(0, 1, 0)}


def test_each_turns_voice_is_judged_against_every_speakers():
    speakers = ["S1", "S2", "S1"]
    near_own = [unit(0.9, 0.1, 0.2), unit(0.1, 0.9, 0.2), unit(0.8, 0.3, 0.1)]
    right = turn_voices(near_own, speakers, VOICES).figures(speakers)
    assert right["turn_voice_accuracy"] == 1.0 and right["similarity_margin"] > 0.5
    # The second speaker's turn in the first speaker's voice: one turn wrong, the margin falls.
    one_swapped = turn_voices([near_own[0], near_own[0], near_own[2]], speakers, VOICES).figures(speakers)
    assert one_swapped["turn_voice_accuracy"] == pytest.approx(2 / 3)
    assert one_swapped["similarity_margin"] < right["similarity_margin"] - 0.4
    # Every voice swapped: no turn right, and the margin negative.
    swapped = turn_voices([near_own[1], near_own[0], near_own[1]], speakers, VOICES).figures(speakers)
    assert swapped["turn_voice_accuracy"] == 0.0 and swapped["similarity_margin"] < -0.5
    # A swallowed turn counts against the accuracy and is left out of the similarities.
    dropped = turn_voices([near_own[0], None, near_own[2]], speakers, VOICES).figures(speakers)
    assert dropped["turn_voice_accuracy"] == pytest.approx(2 / 3)
    assert dropped["similarity_own"] == pytest.approx(np.mean([near_own[0] @ VOICES["S1"], near_own[2] @ VOICES["S1"]]))


def test_drift_and_spread_of_a_voice():
    steady, moved = unit(1, 0.1, 0), unit(0.2, 1, 0)
    assert drift([steady, unit(0, 1, 0), steady], ["S1", "S2", "S1"]) == pytest.approx(1.0)
    assert drift([steady, unit(0, 1, 0), moved], ["S1", "S2", "S1"]) < 0.4
    assert drift([steady, None, moved], ["S1", "S2", "S2"]) is None  # no speaker with two turns found
    same = np.stack([steady] * 4)
    assert voice_spread(same) == pytest.approx(0.0, abs=1e-6)
    assert voice_spread(np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two or more"):
        voice_spread(same[:1])
