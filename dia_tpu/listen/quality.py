"""An optional quality judge: a MOS predictor, absent unless named, never required.

`mos:<hub id or folder>` takes any transformers audio model with a single regression output (an
`AutoModelForAudioClassification` checkpoint with `num_labels=1`, such as a wav2vec 2.0 or WavLM fine-tuned to
predict mean opinion scores) and reports its output as the utterance's predicted MOS. UTMOS and similar
predictors that ship their own model code rather than a transformers checkpoint are not loaded here: convert
them to that form, or judge their output with their own tools. The encoder's `name` carries its model and
the transformers version, written next to each figure.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Protocol

import numpy as np

from dia_tpu.errors import UserError
from dia_tpu.hub import from_hub
from dia_tpu.listen.asr import RATE, to_16k


class QualityJudge(Protocol):
    name: str

    def score(self, waves: list[np.ndarray], rate: int) -> list[float | None]:
        """A predicted MOS per mono waveform at `rate` (None for an empty one)."""


def load_quality_judge(spec: str, device: str = "cpu") -> QualityJudge:
    """`mos:<hub id or folder>`."""
    kind, _, model = spec.partition(":")
    if kind == "mos" and model:
        return MosPredictor(model, device)
    raise UserError(f"quality judge {spec!r}: use mos:<hub id or folder> (an audio model with one regression output)")


class MosPredictor:
    """One utterance at a time: padding a batch would change what some models predict for the shorter clips."""

    def __init__(self, model: str, device: str = "cpu"):
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        with from_hub("the mos quality judge", model):
            self.features = AutoFeatureExtractor.from_pretrained(model)
            self.model = AutoModelForAudioClassification.from_pretrained(model).to(device).eval()
        if self.model.config.num_labels != 1:
            raise UserError(
                f"quality judge mos:{model}: it has {self.model.config.num_labels} outputs; a MOS "
                "predictor has one (a regression head, num_labels=1)"
            )
        self.device, self.torch = device, torch
        self.name = f"mos {model} (transformers {version('transformers')})"

    def score(self, waves: list[np.ndarray], rate: int) -> list[float | None]:
        scores: list[float | None] = []
        for wave in waves:
            audio = to_16k(wave, rate)
            if not len(audio):
                scores.append(None)
                continue
            inputs = self.features(audio, sampling_rate=RATE, return_tensors="pt")
            with self.torch.no_grad():
                logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
            scores.append(float(logits[0, 0]))
        return scores
