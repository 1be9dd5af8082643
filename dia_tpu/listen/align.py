"""Forced alignment: when each word of a known transcript is said in a recording, offline.

- `espeak` (the default): the transcript spoken word by word by espeak-ng (each word's span known exactly), then
  matched to the recording frame by frame by dynamic time warping over cepstra normalised per utterance; each
  word's span is carried across the warping path. The method aeneas uses, in any language espeak-ng speaks; needs
  the `espeak-ng` program (a Debian package).
- `pocketsphinx`: CMU PocketSphinx decoding against a grammar of the transcript alone, English, from its wheel.
  Words missing from its dictionary cannot be aligned, and where its search does not reach the last word the
  recording is not aligned.
- `ctc` (`dia_tpu.listen.ctc`): a wav2vec2-style CTC model's letter probabilities, the best path through the
  transcript's letters; downloaded from the Hub, fast on a GPU.

`align` returns a `TimedWord` per word, in order, inside the recording, or raises `Unaligned` with the reason
(no speech, a word it cannot place): prepare skips such a recording and counts the reason.
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
from typing import Protocol

import numpy as np
import soundfile as sf
import soxr

from dia_tpu.errors import UserError
from dia_tpu.listen.asr import RATE, TimedWord, basic_normalise, sphinx_words

HOP = RATE // 100  # 10 ms frames
WINDOW = 400  # 25 ms
GAP_SECONDS = 0.08  # silence between the reference's words, where the recording's pauses land
QUIET = 1e-3  # what counts as silence when a synthesised word is trimmed
DITHER = 3e-4  # the noise PocketSphinx's input gets (-70 dB of full scale)
_TAGS = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")  # speaker, language and break tags; (laughs)


class Unaligned(ValueError):
    """A recording whose words could not all be placed; the message is the reason prepare counts."""


class Aligner(Protocol):
    name: str

    def align(self, wave: np.ndarray, rate: int, words: list[str]) -> list[TimedWord]: ...


def load_aligner(spec: str, language: str = "en") -> Aligner:
    """`espeak`, `pocketsphinx` (English only), or `ctc` / `ctc:<hub id or folder>` (`dia_tpu.listen.ctc`)."""
    kind, _, model = spec.partition(":")
    if kind == "ctc":
        from dia_tpu.listen.ctc import DEFAULT_CTC, CtcAligner

        return CtcAligner(model or DEFAULT_CTC, language)
    if spec == "espeak":
        return EspeakAligner(language)
    if spec == "pocketsphinx":
        if language != "en":
            raise UserError(f"aligner pocketsphinx: English only, not {language!r}; use espeak")
        return PocketSphinxAligner()
    raise UserError(f"aligner {spec!r}: use espeak, pocketsphinx, ctc or ctc:<hub id or folder>")


def spoken_words(text: str) -> list[str]:
    """The words of a transcript as the aligners take them: speaker and other tags removed, lower case, no
    punctuation (apostrophes inside words kept)."""
    return basic_normalise(_TAGS.sub(" ", text)).split()


class EspeakAligner:
    def __init__(self, language: str = "en"):
        if shutil.which("espeak-ng") is None:
            raise UserError("the espeak aligner needs the espeak-ng program (apt-get install espeak-ng)")
        self.voice = "en-us" if language == "en" else language
        if subprocess.run(["espeak-ng", "-v", self.voice, "-q", "x"], capture_output=True).returncode:
            raise UserError(f"espeak-ng has no voice for language {language!r} to align with")
        version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.split()
        self.name = f"espeak-ng {version[3] if len(version) > 3 else ''} DTW ({self.voice})".replace("  ", " ")

    def align(self, wave: np.ndarray, rate: int, words: list[str]) -> list[TimedWord]:
        if not words:
            raise Unaligned("no words to align")
        clip = _at_16k(wave, rate)
        if len(clip) < WINDOW or float(np.abs(clip).max()) < QUIET:
            raise Unaligned("no speech")
        pieces, spans = [np.zeros(round(2 * GAP_SECONDS * RATE), np.float32)], []
        at = len(pieces[0])
        for word in words:
            sound = _synthesised(word, self.voice)
            spans.append((at // HOP, max(at // HOP + 1, (at + len(sound)) // HOP)))
            pieces += [sound, np.zeros(round(GAP_SECONDS * RATE), np.float32)]
            at += len(sound) + len(pieces[-1])
        reference = np.concatenate(pieces)
        path_ref, path_clip = _warp(_cepstra(reference), _cepstra(clip))
        seconds = len(clip) / RATE
        out, previous_end = [], 0.0
        for word, (first, last) in zip(words, spans, strict=True):
            frames = path_clip[(path_ref >= first) & (path_ref < last)]  # every reference frame is on the path
            # Where the path dwells on one recording frame across a word's edge, the next word starts after it.
            start = max(float(frames.min()) * HOP / RATE, previous_end)
            end = min(max(float(frames.max() + 1) * HOP / RATE, start + HOP / RATE), seconds)
            out.append(TimedWord(word, start, end))
            previous_end = end
        return out


class PocketSphinxAligner:
    def __init__(self):
        from importlib.metadata import version

        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=RATE, loglevel="FATAL", beam=1e-60, wbeam=1e-60, pbeam=1e-60)
        self.name = f"pocketsphinx {version('pocketsphinx')} grammar alignment (its wheel's en-us model)"

    def align(self, wave: np.ndarray, rate: int, words: list[str]) -> list[TimedWord]:
        if not words:
            raise Unaligned("no words to align")
        if unknown := [w for w in words if self.decoder.lookup_word(w) is None]:
            raise Unaligned(f"not in pocketsphinx's dictionary: {', '.join(unknown[:3])}")
        clip = _at_16k(wave, rate)
        if len(clip) < WINDOW or float(np.abs(clip).max()) < QUIET:
            raise Unaligned("no speech")
        self.decoder.add_jsgf_string("transcript", f"#JSGF V1.0; grammar g; public <s> = {' '.join(words)};")
        self.decoder.activate_search("transcript")
        # A little noise: digital silence (exact zeros) throws its feature normalisation off, and it places nothing.
        clip = clip + np.random.default_rng(0).normal(scale=DITHER, size=len(clip)).astype(np.float32)
        self.decoder.start_utt()
        self.decoder.process_raw((np.clip(clip, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
        self.decoder.end_utt()
        placed = sphinx_words(self.decoder)
        if len(placed) != len(words):
            raise Unaligned(f"pocketsphinx placed {len(placed)} of {len(words)} words")
        return [TimedWord(w, s.start, s.end) for w, s in zip(words, placed, strict=True)]


def _at_16k(wave: np.ndarray, rate: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    wave = wave.mean(-1) if wave.ndim == 2 else wave
    return soxr.resample(wave, rate, RATE).astype(np.float32) if rate != RATE and len(wave) else wave


@functools.lru_cache(maxsize=4096)
def _synthesised(word: str, voice: str) -> np.ndarray:
    """`word` spoken by espeak-ng at 16 kHz, its leading and trailing silence cut."""
    done = subprocess.run(["espeak-ng", "-v", voice, "--stdout", word], capture_output=True, check=True)
    sound, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    sound = _at_16k(sound, rate)
    loud = np.flatnonzero(np.abs(sound) > QUIET)
    return sound[loud[0] : loud[-1] + 1] if len(loud) else sound[:HOP]


@functools.cache
def _filters() -> tuple[np.ndarray, np.ndarray]:
    from transformers.audio_utils import mel_filter_bank

    mel = mel_filter_bank(WINDOW // 2 + 1, 40, 60.0, 7600.0, RATE, norm="slaney", mel_scale="slaney")
    n = np.arange(40)
    dct = np.cos(np.pi / 40 * (n[None] + 0.5) * np.arange(1, 13)[:, None])  # cepstra 1..12 (loudness left out)
    return mel, dct


def _cepstra(wave: np.ndarray) -> np.ndarray:
    """Cepstra 1..12 of 25 ms frames every 10 ms, each normalised over the utterance: [frames, 12]."""
    mel, dct = _filters()
    padded = np.pad(wave, (WINDOW // 2, WINDOW // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[::HOP] * np.hanning(WINDOW)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    features = np.log(power @ mel + 1e-8) @ dct.T
    return (features - features.mean(0)) / (features.std(0) + 1e-5)


def _warp(reference: np.ndarray, clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic time warping of `clip` [M, D] against `reference` [N, D]: the cheapest monotonic path from the
    first frames to the last, as (reference frames, clip frames) along it."""
    squares = (reference**2).sum(1)[:, None] + (clip**2).sum(1)[None] - 2 * reference @ clip.T
    cost = np.sqrt(np.maximum(squares, 0)).astype(np.float32)
    n, m = cost.shape
    total = np.empty_like(cost)
    total[0] = np.cumsum(cost[0])
    for i in range(1, n):
        # From above or the diagonal, then along the row: a running minimum of (entry - row prefix) + prefix.
        entry = np.minimum(total[i - 1], np.concatenate(([np.inf], total[i - 1, :-1])))
        prefix = np.cumsum(cost[i])
        shifted = np.concatenate(([0.0], prefix[:-1]))
        total[i] = prefix + np.minimum.accumulate(entry - shifted)
    path = [(n - 1, m - 1)]
    i, j = n - 1, m - 1
    while i or j:
        moves = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]
        i, j = min((p for p in moves if p[0] >= 0 and p[1] >= 0), key=lambda p: total[p])
        path.append((i, j))
    steps = np.array(path[::-1])
    return steps[:, 0], steps[:, 1]
