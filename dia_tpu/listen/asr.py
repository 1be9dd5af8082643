"""Speech recognisers: what a listener would have understood of each utterance (evaluation's intelligibility,
transcribe's transcripts).

- `whisper` (recommended): transformers' Whisper. `openai/whisper-large-v3-turbo` by default, or any Whisper
  checkpoint by hub id or folder (`whisper:openai/whisper-small`, `whisper:/models/my-whisper`). Batched, on
  the device given. Transcripts and references go through Whisper's own normaliser (its English one for
  English), as Whisper's published WERs do.
- `pocketsphinx` (offline): CMU PocketSphinx with the English model its wheel ships, so nothing is
  downloaded. It is much weaker than Whisper: on the bundled espeak-ng sample its WER is 0.83, and noise
  gives an empty transcript. Use it to compare checkpoints where nothing
  can be downloaded (tests, air-gapped machines), never for absolute figures; its name says so in every
  result. (Decoding against a loop over the prompts' own words was tried: no better, and nine times slower.)

A recogniser is built by `load_recogniser` and imported only then; each has a `name` with its package
version and model, written next to every figure so that results are compared like with like. `hear` also gives
when each word was said where the recogniser knows: PocketSphinx always (its search's word segments), Whisper
where its checkpoint names the cross-attention heads that follow the audio (`alignment_heads` in its generation
config, as OpenAI's checkpoints do: the times come from those heads by dynamic time warping).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from importlib.metadata import version
from typing import Protocol

import numpy as np
import soxr

from dia_tpu.errors import UserError
from dia_tpu.hub import from_hub

DEFAULT_WHISPER = "openai/whisper-large-v3-turbo"
RATE = 16000  # what both recognisers listen at
_NOT_WORD = re.compile(r"[^\w\s']")
POCKETSPHINX_FRAMES = 100  # its frames a second


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float  # seconds
    end: float


@dataclass(frozen=True)
class Recognised:
    """What a recogniser made of one waveform: its transcript, its confidence in it (0..1, None where it gives
    none) and each word's span in seconds from the start of the waveform (None where it does not know them)."""

    text: str
    confidence: float | None = None
    words: list[TimedWord] | None = None


class Recogniser(Protocol):
    name: str

    def transcribe(self, waves: list[np.ndarray], rate: int) -> list[str]:
        """One transcript per mono waveform at `rate`."""

    def normalise(self, text: str) -> str:
        """`text` as this recogniser's transcripts are compared."""

    def hear(self, waves: list[np.ndarray], rate: int) -> list[Recognised]:
        """Transcripts with the recogniser's confidence in each and, where it knows them, its words' times."""


def load_recogniser(spec: str, device: str = "cpu", batch_size: int = 8, language: str | None = "en") -> Recogniser:
    """`pocketsphinx`, `whisper` or `whisper:<hub id or folder>`."""
    kind, _, model = spec.partition(":")
    if kind == "pocketsphinx" and not model:
        return PocketSphinx()
    if kind == "whisper":
        return Whisper(model or DEFAULT_WHISPER, device, batch_size, language)
    raise UserError(f"recogniser {spec!r}: use pocketsphinx, whisper or whisper:<hub id or folder>")


def basic_normalise(text: str) -> str:
    """Lower case, accents kept, punctuation (but apostrophes inside words) removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    words = _NOT_WORD.sub(" ", text).split()
    return " ".join(word.strip("'") for word in words if word.strip("'"))


def to_16k(wave: np.ndarray, rate: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    wave = wave.mean(-1) if wave.ndim == 2 else wave
    return soxr.resample(wave, rate, RATE) if rate != RATE and len(wave) else wave


def sphinx_words(decoder) -> list[TimedWord]:
    """The words of a PocketSphinx decoder's last search, in order, timed: its fillers (<s>, </s>, <sil>, [NOISE],
    ...) left out, its alternative pronunciations (word(2), word(3), ...) named as the word."""
    return [
        TimedWord(s.word.split("(")[0], s.start_frame / POCKETSPHINX_FRAMES, (s.end_frame + 1) / POCKETSPHINX_FRAMES)
        for s in decoder.seg() or ()
        if s.word[:1] not in "<[+"
    ]


class PocketSphinx:
    """CMU PocketSphinx, English, offline."""

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError as err:
            raise UserError("the pocketsphinx recogniser needs pocketsphinx: pip install 'dia-tpu[eval]'") from err
        self.decoder = Decoder(samprate=RATE, loglevel="FATAL")
        self.name = f"pocketsphinx {version('pocketsphinx')} (its wheel's en-us model; weak: compare, do not quote)"

    def transcribe(self, waves: list[np.ndarray], rate: int) -> list[str]:
        return [heard.text for heard in self.hear(waves, rate)]

    def hear(self, waves: list[np.ndarray], rate: int) -> list[Recognised]:
        # Its hypothesis "probability" is not calibrated per utterance, so it reports no confidence.
        found = []
        for wave in waves:
            pcm = (np.clip(to_16k(wave, rate), -1.0, 1.0) * 32767).astype(np.int16)
            if len(pcm) < RATE // 10:
                found.append(Recognised("", None, []))
                continue
            self.decoder.start_utt()
            self.decoder.process_raw(pcm.tobytes(), full_utt=True)
            self.decoder.end_utt()
            words = sphinx_words(self.decoder)
            found.append(Recognised(" ".join(w.text for w in words), None, words))
        return found

    def normalise(self, text: str) -> str:
        return basic_normalise(text)


class Whisper:
    """transformers' Whisper, batched, on `device`."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 8, language: str | None = "en"):
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        with from_hub("the whisper recogniser", model):
            self.processor = WhisperProcessor.from_pretrained(model)
            dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
            self.model = WhisperForConditionalGeneration.from_pretrained(model, dtype=dtype).to(device).eval()
        self.device, self.dtype, self.batch_size, self.language = device, dtype, batch_size, language
        self.name = f"whisper {model} (transformers {version('transformers')})"

    def transcribe(self, waves: list[np.ndarray], rate: int) -> list[str]:
        return [heard.text for heard in self._generate(waves, rate, scored=False)]

    def hear(self, waves: list[np.ndarray], rate: int) -> list[Recognised]:
        """Confidence: the geometric mean of the transcript's token probabilities."""
        return self._generate(waves, rate, scored=True)

    def _generate(self, waves: list[np.ndarray], rate: int, scored: bool) -> list[Recognised]:
        import torch

        audio = [to_16k(wave, rate) for wave in waves]
        # A checkpoint without language tokens (English-only, or a test's tiny one) takes no language.
        multilingual = getattr(self.model.generation_config, "lang_to_id", None)
        options = {"language": self.language, "task": "transcribe"} if multilingual else {}
        timed = scored and getattr(self.model.generation_config, "alignment_heads", None) is not None
        if scored:
            options |= {"return_dict_in_generate": True, "output_scores": True, "return_token_timestamps": timed}
        found: list[Recognised] = []
        for start in range(0, len(audio), self.batch_size):
            batch = [a if len(a) else np.zeros(RATE // 10, np.float32) for a in audio[start : start + self.batch_size]]
            features = self.processor.feature_extractor(
                batch, sampling_rate=RATE, return_tensors="pt", return_attention_mask=True
            )
            with torch.no_grad():
                out = self.model.generate(
                    features.input_features.to(self.device, self.dtype),
                    attention_mask=features.attention_mask.to(self.device),
                    **options,
                )
            ids = out["sequences"] if scored else out
            texts = [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
            if not scored:
                found += [Recognised(text) for text in texts]
                continue
            steps = self.model.compute_transition_scores(out["sequences"], out["scores"], normalize_logits=True)
            generated = ids[:, -steps.shape[1] :]
            special = torch.tensor(self.processor.tokenizer.all_special_ids)
            keep = ~torch.isin(generated, special) & torch.isfinite(steps)
            mean = (steps.float() * keep).sum(1) / keep.sum(1).clamp(min=1)
            for row, (text, m, k) in enumerate(zip(texts, mean, keep, strict=True)):
                words = None
                if timed:
                    ends = out["token_timestamps"][row].tolist()
                    words = self._words(ids[row].tolist(), ends, len(batch[row]) / RATE)
                found.append(Recognised(text, float(torch.exp(m)) if k.any() else None, words))
        return [
            heard if len(a) else Recognised("", None, [] if heard.words is not None else None)
            for heard, a in zip(found, audio, strict=True)
        ]

    def _words(self, ids: list[int], ends: list[float], seconds: float) -> list[TimedWord]:
        """Tokens grouped into words (a word starts at a token that begins with a space), each spanning from the
        end of the token before its first to the end of its last, inside the waveform's `seconds`."""
        tokenizer = self.processor.tokenizer
        special = set(tokenizer.all_special_ids)
        groups: list[list[int]] = []  # token positions
        for i, token in enumerate(ids):
            piece = tokenizer.convert_ids_to_tokens(token)
            if token in special or (piece.startswith("<|") and piece.endswith("|>")):  # and timestamp tokens
                continue
            if not groups or piece.startswith("\u0120"):  # byte-level BPE's space
                groups.append([])
            groups[-1].append(i)
        words = []
        for group in groups:
            text = tokenizer.decode([ids[i] for i in group]).strip()
            start = min(ends[group[0] - 1] if group[0] else 0.0, seconds)
            if text:
                words.append(TimedWord(text, start, min(max(ends[group[-1]], start), seconds)))
        return words

    def normalise(self, text: str) -> str:
        tokenizer = self.processor.tokenizer
        if self.language in (None, "en", "english") and getattr(tokenizer, "english_spelling_normalizer", None):
            return " ".join(tokenizer.normalize(text).split())
        return " ".join(tokenizer.basic_normalize(text).split())
