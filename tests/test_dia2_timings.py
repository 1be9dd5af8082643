"""Word timings for Dia2's prepared rows (`dia_tpu.families.dia2.timings`): a transcript's words as generation
splits them, timed by an aligner or read from a timing file, checked, and put in codec frames."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT

from dia_tpu.data.clips import Segment
from dia_tpu.families.dia2.data import timing_problems
from dia_tpu.families.dia2.timings import Said, Untimed, aligned, from_segments, in_frames, script_words
from dia_tpu.listen.align import load_aligner
from dia_tpu.listen.asr import TimedWord


def test_a_transcript_splits_into_the_words_generation_reads_with_what_an_aligner_hears():
    assert script_words("[S1] Hello, camp-site \u2014 [S2] it\u2019s yes! [laughs]") == [
        ("Hello,", 1, ["hello"]),
        ("camp-site", 1, ["camp", "site"]),
        ("\u2014", 1, []),
        ("it's", 2, ["it's"]),
        ("yes!", 2, ["yes"]),
    ]


def test_aligned_words_span_their_pieces_and_punctuation_joins_a_neighbour():
    def every_half_second(heard):
        return [TimedWord(w, 0.5 * k, 0.5 * k + 0.4) for k, w in enumerate(heard)]

    said = aligned("\u2014 [S1] Hello, camp-site \u2014 [S2] yes!", every_half_second)
    assert said == [
        Said("\u2014 Hello,", 0.0, 0.4, 1),
        Said("camp-site \u2014", 0.5, 1.4, 1),  # "camp" 0.5-0.9 and "site" 1.0-1.4
        Said("yes!", 1.5, 1.9, 2),
    ]
    with pytest.raises(Untimed, match="no words to say"):
        aligned("[S1] \u2014", every_half_second)


def test_a_bundled_clip_aligned_gives_a_row_training_accepts():
    wave, rate = sf.read(ROOT / "data/sample/audio/utt_002.flac", dtype="float32")
    espeak = load_aligner("espeak")
    said = aligned("[S1] Great. Where should we camp this weekend?", lambda heard: espeak.align(wave, rate, heard))
    words = in_frames(said, len(wave) / rate, 12.5)
    assert [w["word"] for w in words] == ["Great.", "Where", "should", "we", "camp", "this", "weekend?"]
    assert timing_problems([words], [round(len(wave) / rate * 12.5)], ["utt_002"]) == []
    # Frames follow the aligner's seconds (80 ms a frame): "Where" starts after the pause after "Great."
    assert words[1]["start"] - words[0]["end"] >= 2
    assert np.all(np.diff([w["start"] for w in words]) > 0)


def test_a_timing_files_speakers_are_numbered_in_the_order_it_names_them():
    segments = [Segment(0.1, 0.4, "Hi", "B"), Segment(0.5, 0.9, "there", "A"), Segment(1.0, 1.2, "you", "B")]
    assert [(s.text, s.speaker) for s in from_segments(segments)] == [("Hi", 1), ("there", 2), ("you", 1)]
    with pytest.raises(Untimed, match="more than two speakers in the timings \\('B', 'A', 'C'\\)"):
        from_segments([*segments, Segment(1.3, 1.5, "all", "C")])


@pytest.mark.parametrize(
    ("said", "why"),
    [
        ([Said("hi", 0.1, 2.5, 1)], "a word outside the clip: 'hi' at 0.10-2.50 s, the clip 2.00 s"),
        ([Said("hi", 0.8, 1.0, 1), Said("there", 0.5, 0.7, 1)], "words out of order: 'there' starts before the word"),
        ([Said("hi", 0.1, 1.0, 1), Said("yes", 0.6, 0.9, 2)], "overlapping turns: 'yes' starts before 'hi' ends"),
    ],
)
def test_timings_that_do_not_fit_are_a_named_reason(said, why):
    with pytest.raises(Untimed, match=why):
        in_frames(said, 2.0, 12.5)


def test_words_in_frames_stay_inside_the_clip_and_last_a_frame_at_least():
    words = in_frames([Said("a", 0.0, 0.01, 1), Said("b", 1.9, 2.04, 2)], 2.0, 12.5)
    assert words == [
        {"word": "a", "start": 0, "end": 1, "speaker": 1},
        {"word": "b", "start": 24, "end": 25, "speaker": 2},
    ]
