"""How much a codec keeps of speech: encode, decode, and judge the decoded audio as the original is judged
(`dia_tpu.evaluation.judge` rows: the recogniser's word and character errors, the signal measures), plus
the log-mel distance between the two."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DacModel, MimiModel

from dia_tpu.data.audio import decode, encode
from dia_tpu.evaluation.judge import Judges, Prompt, Row, Sums, judge
from dia_tpu.evaluation.spectra import mel_distance
from dia_tpu.listen.asr import Recogniser


def round_trip(codec: DacModel | MimiModel, wave: np.ndarray) -> np.ndarray:
    """`wave` (mono, at the codec's rate) encoded to codes and decoded back."""
    if isinstance(codec, MimiModel):
        with torch.no_grad():
            codes = codec.encode(torch.from_numpy(np.asarray(wave, dtype=np.float32))[None, None]).audio_codes
            return codec.decode(codes).audio_values[0, 0, : len(wave)].numpy()
    (codes,) = encode(codec, [np.asarray(wave, dtype=np.float32)])
    return decode(codec, torch.from_numpy(codes.astype(np.int64)))[: len(wave)]


@dataclass
class RoundTrip:
    """Judged rows of the originals and of their reconstructions (which also hold `mel_distance`), and the
    reconstructions themselves."""

    original: list[Row]
    decoded: list[Row]
    waves: list[np.ndarray]

    def summary(self) -> dict:
        """Pooled error rates of both sides (errors over all reference words), and the mean mel distance."""
        before, after = Sums.of(self.original).figures(), Sums.of(self.decoded).figures()
        out = {"utterances": len(self.decoded)}
        for key in ("wer", "cer"):
            out[f"{key}_original"], out[f"{key}_decoded"] = round(before[key], 4), round(after[key], 4)
        out["mel_distance"] = round(float(np.mean([row.mel_distance for row in self.decoded])), 4)
        return out


def measure_round_trips(
    codec: DacModel | MimiModel, items: list[tuple[str, np.ndarray]], recogniser: Recogniser
) -> RoundTrip:
    """Round-trip each (script, wave) through `codec`; judge originals and reconstructions alike, each against
    its script, with the original as the reconstruction's reference clip."""
    rate = codec.config.sampling_rate
    waves = [np.asarray(wave, dtype=np.float32) for _, wave in items]
    prompts = [Prompt(f"{i:04d}", script, reference=waves[i]) for i, (script, _) in enumerate(items)]
    decoded = [round_trip(codec, wave) for wave in waves]
    judges, no_codes, ended = Judges(recogniser=recogniser), [None] * len(waves), [True] * len(waves)
    original = judge(prompts, waves, no_codes, ended, rate, judges)
    back = judge(prompts, decoded, no_codes, ended, rate, judges)
    for row, wave, reconstruction in zip(back, waves, decoded, strict=True):
        row.mel_distance = mel_distance(reconstruction, wave, rate)
    return RoundTrip(original, back, decoded)
