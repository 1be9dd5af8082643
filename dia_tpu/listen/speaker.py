"""Speaker embeddings, so that "sounds like the voice prompt" and "sounds like the training data's [S1]" are
numbers: the cosine similarity of two utterances' embeddings (1: the same voice, as heard by the model).

- `resemblyzer` (offline): the GE2E speaker encoder its wheel ships (256-dimensional, 16 kHz). The first use
  in a fresh environment compiles librosa's numba kernels (about 20 s here), later ones do not.
- `xvector:<hub id or folder>`: a transformers audio x-vector model, e.g. `microsoft/wavlm-base-plus-sv`
  (WavLM fine-tuned for speaker verification), the stronger choice where a download is possible.

Every encoder's `name` carries its package version and model, written next to each figure.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version
from typing import Protocol

import numpy as np

from dia_tpu.errors import UserError
from dia_tpu.hub import from_hub
from dia_tpu.listen.asr import RATE, to_16k

DEFAULT_XVECTOR = "microsoft/wavlm-base-plus-sv"


class SpeakerEncoder(Protocol):
    name: str

    def embed(self, waves: list[np.ndarray], rate: int) -> np.ndarray:
        """[n, d] unit-length embeddings of n mono waveforms at `rate`."""


def load_speaker_encoder(spec: str, device: str = "cpu") -> SpeakerEncoder:
    """`resemblyzer`, `xvector` or `xvector:<hub id or folder>`."""
    kind, _, model = spec.partition(":")
    if kind == "resemblyzer" and not model:
        return Resemblyzer(device)
    if kind == "xvector":
        return XVector(model or DEFAULT_XVECTOR, device)
    raise UserError(f"speaker encoder {spec!r}: use resemblyzer, xvector or xvector:<hub id or folder>")


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two [n, d] embedding arrays."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-9)


class Resemblyzer:
    def __init__(self, device: str = "cpu"):
        try:
            with warnings.catch_warnings():  # webrtcvad, which it imports, warns that pkg_resources is deprecated
                warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
                from resemblyzer import VoiceEncoder
        except ImportError as err:
            raise UserError("the resemblyzer speaker encoder needs resemblyzer: pip install 'dia-tpu[eval]'") from err
        self.encoder = VoiceEncoder(str(device), verbose=False)
        self.name = f"resemblyzer {version('resemblyzer')} (GE2E encoder in the wheel)"

    def embed(self, waves: list[np.ndarray], rate: int) -> np.ndarray:
        from resemblyzer import preprocess_wav

        out = []
        for wave in waves:
            if len(wave) < rate // 4:  # nothing to hear (an empty utterance would warn inside resemblyzer)
                out.append(np.zeros(256))
                continue
            # Its own preprocessing: 16 kHz, volume normalised, long silences trimmed (webrtcvad).
            audio = preprocess_wav(to_16k(wave, rate).astype(np.float32), source_sr=RATE)
            out.append(self.encoder.embed_utterance(audio) if len(audio) >= RATE // 4 else np.zeros(256))
        return np.stack(out)


class XVector:
    def __init__(self, model: str, device: str = "cpu"):
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        with from_hub("the xvector speaker encoder", model):
            self.features = AutoFeatureExtractor.from_pretrained(model)
            self.model = AutoModelForAudioXVector.from_pretrained(model).to(device).eval()
        self.device, self.torch = device, torch
        self.name = f"xvector {model} (transformers {version('transformers')})"

    def embed(self, waves: list[np.ndarray], rate: int) -> np.ndarray:
        audio = [to_16k(wave, rate) for wave in waves]
        batch = [a if len(a) else np.zeros(RATE // 10, dtype=np.float32) for a in audio]
        inputs = self.features(batch, sampling_rate=RATE, return_tensors="pt", padding=True, return_attention_mask=True)
        with self.torch.no_grad():
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).embeddings
        out = self.torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy()
        return np.where(np.array([len(a) > 0 for a in audio])[:, None], out, 0.0)
