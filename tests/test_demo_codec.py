"""The shipped demo codec (codecs/demo-dac): a DacModel of the real codec's interface, loaded as any codec folder
is, that keeps the bundled speech recognisable through encode -> decode."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT
from transformers import DacModel

from dia_tpu.config import PrepareConfig
from dia_tpu.data.audio import load_audio
from dia_tpu.data.sources import read_clips
from dia_tpu.evaluation.roundtrip import measure_round_trips
from dia_tpu.evaluation.spectra import mel_distance
from dia_tpu.evaluation.text import Errors, char_errors, spoken_text, word_errors
from dia_tpu.listen.asr import load_recogniser

CODEC = ROOT / "codecs" / "demo-dac"
# Measured on every fourth bundled clip with the shipped weights (see codecs/demo-dac/README.md), with margin.
# PocketSphinx is weak on espeak-ng speech (it misses most words of the originals too), so the character
# error rate is what separates speech from noise: silence or noise scores 1.0 or more.
MAX_MEL_DISTANCE = 0.24  # these 8 clips: 0.188 (all 32: 0.180)
MAX_WER_DECODED = 0.90  # these 8: 0.625 (their originals: 0.750)
MAX_CER_DECODED = 0.60  # these 8: 0.393 (their originals: 0.589)


@pytest.fixture(scope="module")
def codec() -> DacModel:
    return DacModel.from_pretrained(CODEC, dtype=torch.float32).eval()


def test_demo_codec_has_dias_shapes(codec):
    config = codec.config
    assert (config.sampling_rate, config.hop_length, config.n_codebooks, config.codebook_size) == (44100, 512, 9, 1024)
    recipe = json.loads((CODEC / "training.json").read_text())["recipe"]
    assert recipe["seed"] == 0 and recipe["corpus"]["passages"] > 0  # how it was made travels with it


def test_demo_codec_round_trips_the_bundled_speech(codec):
    rate = codec.config.sampling_rate
    clips = list(read_clips(str(ROOT / "data/sample"), PrepareConfig()))
    items = [(clip.text, load_audio(clip.audio.path, rate)) for clip in clips[::4]]
    recogniser = load_recogniser("pocketsphinx")
    with torch.no_grad():
        judged = measure_round_trips(codec, items, recogniser)
    summary = judged.summary()
    assert summary["utterances"] == 8
    assert summary["mel_distance"] <= MAX_MEL_DISTANCE, summary
    assert summary["wer_decoded"] <= MAX_WER_DECODED, summary
    assert summary["cer_decoded"] <= MAX_CER_DECODED, summary
    # Judged against the next clip's script or sound, the same figures fail (measured: CER 0.78, WER 1.05, mel
    # distance 0.61 and more): the limits tell this speech from other speech of the same voices.
    scripts = [text for text, _ in items[1:] + items[:1]]
    pairs = [
        (recogniser.normalise(spoken_text(script)), recogniser.normalise(row.heard.transcript))
        for script, row in zip(scripts, judged.decoded, strict=True)
    ]
    assert sum((char_errors(*pair) for pair in pairs), Errors(0, 0)).rate > MAX_CER_DECODED
    assert sum((word_errors(*pair) for pair in pairs), Errors(0, 0)).rate > MAX_WER_DECODED
    assert mel_distance(judged.waves[0], items[1][1], rate) > MAX_MEL_DISTANCE


def test_fused_snake_keeps_the_codes_and_the_sound():
    """prepare.compile (on by default) runs the Snake activations compiled: same codes, same decoded audio."""
    from dia_tpu.data.audio import decode, encode
    from dia_tpu.model.codec import fuse_snake

    eager = DacModel.from_pretrained(CODEC, dtype=torch.float32).eval()
    fused = DacModel.from_pretrained(CODEC, dtype=torch.float32).eval()
    assert fuse_snake(fused)
    rate = eager.config.sampling_rate
    clips = list(read_clips(str(ROOT / "data/sample"), PrepareConfig()))
    for clip in clips[:3]:  # lengths differ: one compilation serves them all
        wave = load_audio(clip.audio.path, rate)
        (codes,) = encode(eager, [wave])
        (again,) = encode(fused, [wave])
        assert (codes == again).all(), clip.audio.path
        sound = decode(eager, torch.from_numpy(codes))
        torch.testing.assert_close(decode(fused, torch.from_numpy(codes)), sound, rtol=0, atol=1e-5)


def test_windowed_encoding_gives_the_whole_clips_codes(monkeypatch):
    """prepare.window_seconds (2 s on a CPU, by default): a long clip encoded in windows, each with the encoder's
    reach of audio on either side, gets every code the whole clip gets; with less context than the reach the
    codes near the windows' edges change."""
    import numpy as np

    import dia_tpu.data.audio as audio
    from dia_tpu.model.codec import encoder_reach

    codec = DacModel.from_pretrained(CODEC, dtype=torch.float32).eval()
    rate = codec.config.sampling_rate
    clips = read_clips(str(ROOT / "data/sample"), PrepareConfig())
    speech = np.concatenate([load_audio(clip.audio.path, rate) for clip in clips])
    waves = [speech[: 12 * rate + 300], speech[-12 * rate - 300 :]]  # not a whole number of frames
    (whole, other) = audio.encode(codec, waves, window_seconds=0)
    assert len(whole) == len(waves[0]) // codec.config.hop_length
    for seconds in (None, 2.0, 0.5):  # the default, and windows shorter than the reach either side
        windowed = audio.encode(codec, waves, seconds)
        assert all(np.array_equal(a, b) for a, b in zip(windowed, (whole, other), strict=True)), seconds
    assert encoder_reach(codec) > 2
    monkeypatch.setattr(audio, "encoder_reach", lambda codec: 1)
    assert not np.array_equal(audio.encode(codec, waves[:1], 0.5)[0], whole)
