"""How much a codec keeps of speech: encode, decode, and compare the decoded audio with the original by
ear-like measures (a recogniser's word and character errors on both, and the log-mel distance)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import DacModel

from dia_tpu.data.audio import decode, encode
from dia_tpu.evaluation.asr import Recogniser
from dia_tpu.evaluation.spectra import mel_distance
from dia_tpu.evaluation.text import Errors, char_errors, spoken_text, word_errors


def round_trip(codec: DacModel, wave: np.ndarray) -> np.ndarray:
    """`wave` (mono, at the codec's rate) encoded to codes and decoded back."""
    import torch

    (codes,) = encode(codec, [np.asarray(wave, dtype=np.float32)])
    return decode(codec, torch.from_numpy(codes.astype(np.int64)))[: len(wave)]


@dataclass
class RoundTrip:
    """Figures over a set of utterances: errors are summed before dividing, the mel distance is a mean."""

    original_words: Errors
    decoded_words: Errors
    original_chars: Errors
    decoded_chars: Errors
    mel_distance: float
    rows: list[dict]

    def summary(self) -> dict:
        return {
            "utterances": len(self.rows),
            "wer_original": round(self.original_words.rate, 4),
            "wer_decoded": round(self.decoded_words.rate, 4),
            "cer_original": round(self.original_chars.rate, 4),
            "cer_decoded": round(self.decoded_chars.rate, 4),
            "mel_distance": round(self.mel_distance, 4),
        }


def measure_round_trips(codec: DacModel, items: list[tuple[str, np.ndarray]], recogniser: Recogniser) -> RoundTrip:
    """Round-trip each (script, wave) through `codec` and judge originals and reconstructions alike."""
    rate = codec.config.sampling_rate
    waves = [np.asarray(w, dtype=np.float32) for _, w in items]
    decoded = [round_trip(codec, w) for w in waves]
    heard_original = recogniser.transcribe(waves, rate)
    heard_decoded = recogniser.transcribe(decoded, rate)
    zero = Errors(0, 0)
    words_o, words_d, chars_o, chars_d, distances, rows = zero, zero, zero, zero, [], []
    for (script, _), wave, back, ho, hd in zip(items, waves, decoded, heard_original, heard_decoded, strict=True):
        ref = recogniser.normalise(spoken_text(script))
        ho, hd = recogniser.normalise(ho), recogniser.normalise(hd)
        words_o, words_d = words_o + word_errors(ref, ho), words_d + word_errors(ref, hd)
        chars_o, chars_d = chars_o + char_errors(ref, ho), chars_d + char_errors(ref, hd)
        distances.append(mel_distance(back, wave, rate))
        rows.append({"text": ref, "heard_original": ho, "heard_decoded": hd, "mel_distance": round(distances[-1], 4)})
    return RoundTrip(words_o, words_d, chars_o, chars_d, float(np.mean(distances)), rows)
