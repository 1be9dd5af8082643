"""Forced alignment with a CTC acoustic model (`prepare.aligner: ctc` or `ctc:<hub id or folder>`): a wav2vec2-style
model's letter probabilities for every 20 ms of the recording, and the one path through the transcript's letters
that explains them best (Viterbi over the letters with CTC's blanks between them). Each word spans the frames of
its letters. Fast on a GPU, where it runs when one is present; any language the checkpoint spells.

The default, `facebook/wav2vec2-base-960h`, spells English in capitals. Meta's MMS (`ctc:facebook/mms-1b-all`)
spells over a thousand languages through an adapter per language, chosen by the clip's language code (ISO 639-3
such as `fra`, or one of the two-letter codes in `ISO_639_3`).
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import torch

from dia_tpu.errors import UserError
from dia_tpu.hub import from_hub
from dia_tpu.listen.align import Unaligned
from dia_tpu.listen.asr import RATE, TimedWord, to_16k

DEFAULT_CTC = "facebook/wav2vec2-base-960h"
# Two-letter codes of common languages and the three-letter ones MMS names its adapters by.
ISO_639_3 = {
    "en": "eng", "fr": "fra", "de": "deu", "es": "spa", "it": "ita", "pt": "por", "nl": "nld", "pl": "pol",
    "ru": "rus", "uk": "ukr", "tr": "tur", "ar": "ara", "hi": "hin", "ja": "jpn", "ko": "kor", "zh": "cmn",
    "vi": "vie", "id": "ind", "sv": "swe", "fi": "fin", "cs": "ces", "el": "ell", "hu": "hun", "ro": "ron",
}  # fmt: skip


class CtcAligner:
    def __init__(self, model: str = DEFAULT_CTC, language: str = "en", device: str | None = None):
        from transformers import AutoModelForCTC, AutoProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        with from_hub("the ctc aligner", model):
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = AutoModelForCTC.from_pretrained(model).to(self.device).eval()
        tokenizer = self.processor.tokenizer
        if getattr(tokenizer, "vocab", None) and isinstance(next(iter(tokenizer.vocab.values())), dict):
            code = ISO_639_3.get(language, language)  # MMS: a vocabulary and an adapter per language
            if code not in tokenizer.vocab:
                raise UserError(f"aligner ctc:{model}: no language {language!r} in it (it takes ISO 639-3 codes)")
            tokenizer.set_target_lang(code)
            self.model.load_adapter(code)
        self.letters = tokenizer.get_vocab()
        self.blank = tokenizer.pad_token_id
        self.space = self.letters.get(tokenizer.word_delimiter_token)
        upper = sum(k.isupper() for k in self.letters if len(k) == 1)
        self.upper = upper > sum(k.islower() for k in self.letters if len(k) == 1)
        self.name = f"ctc {model} (transformers {version('transformers')})"

    def align(self, wave: np.ndarray, rate: int, words: list[str]) -> list[TimedWord]:
        if not words:
            raise Unaligned("no words to align")
        spelled = []
        for word in words:
            ids = [self.letters[c] for c in (word.upper() if self.upper else word) if c in self.letters]
            if not ids:
                raise Unaligned(f"no letter of {word!r} in the ctc model's alphabet")
            spelled.append(ids)
        clip = to_16k(wave, rate)
        features = self.processor.feature_extractor(clip, sampling_rate=RATE, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(features.input_values.to(self.device)).logits[0]
        emissions = torch.log_softmax(logits.float(), dim=-1)
        targets, owner = [], []  # the letters (words joined by the delimiter) and the word each belongs to
        for k, ids in enumerate(spelled):
            if k and self.space is not None:
                targets.append(self.space)
                owner.append(-1)
            targets += ids
            owner += [k] * len(ids)
        frames = ctc_path(emissions, torch.tensor(targets, device=emissions.device), self.blank)
        if frames is None:
            raise Unaligned(f"more letters than the ctc model's frames ({len(emissions)} for {len(targets)} letters)")
        seconds = len(clip) / RATE
        step = seconds / len(emissions)
        out = []
        for k, word in enumerate(words):
            mine = [f for f, who in zip(frames, owner, strict=True) if who == k]
            start, end = min(s for s, _ in mine) * step, max(e for _, e in mine) * step
            out.append(TimedWord(word, start, min(end, seconds)))
        return out


def ctc_path(emissions: torch.Tensor, targets: torch.Tensor, blank: int) -> list[tuple[int, int]] | None:
    """The most likely CTC alignment of `targets` [L] to `emissions` [T, V] (log-probabilities): for each target
    the frames [first, last + 1) it is emitted in; None when the frames cannot hold the targets (a letter needs a
    frame, and a letter repeated needs a blank between)."""
    frames, count = emissions.shape[0], len(targets)
    # The targets with a blank before, between and after them: state 2k + 1 emits target k.
    states = torch.full((2 * count + 1,), blank, dtype=torch.long, device=emissions.device)
    states[1::2] = targets
    size = len(states)
    skip = torch.zeros(size, dtype=torch.bool, device=emissions.device)  # may jump over the blank before it
    skip[3::2] = targets[1:] != targets[:-1]
    impossible = torch.tensor(float("-inf"), device=emissions.device)
    score = torch.full((size,), float("-inf"), device=emissions.device)
    score[:2] = emissions[0, states[:2]]
    moves = torch.zeros((frames, size), dtype=torch.uint8, device=emissions.device)
    for t in range(1, frames):
        stay = score
        advance = torch.cat([impossible[None], score[:-1]])
        jump = torch.where(skip, torch.cat([impossible.expand(2), score[:-2]]), impossible)
        best, move = torch.stack([stay, advance, jump]).max(0)
        score = best + emissions[t, states]
        moves[t] = move.to(torch.uint8)
    ends = score[-2:]  # the last target's state or the blank after it (targets are never empty)
    if not torch.isfinite(ends).any():
        return None
    state = size - 2 + int(ends.argmax())
    path = [0] * frames
    moves = moves.cpu().numpy()
    for t in range(frames - 1, -1, -1):
        path[t] = state
        state -= int(moves[t, state])
    spans: list[list[int]] = [[frames, 0] for _ in range(count)]
    for t, state in enumerate(path):
        if state % 2:
            span = spans[state // 2]
            span[0], span[1] = min(span[0], t), t + 1
    return [(first, last) for first, last in spans]
