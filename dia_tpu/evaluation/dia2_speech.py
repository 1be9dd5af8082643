"""How a Dia2 model speaks for training's samples and `eval.audio` (`dia_tpu.evaluation.speech`): its own
generation (`dia_tpu.families.dia2.decode`) and its Mimi codec, both named by the model's folder.

Sampling follows `samples.*` where given, else upstream's defaults (`Dia2Sampling`: audio 0.8 / top 50, text
0.6 / 50, guidance 2.0 over the top 50); Dia2 has no nucleus sampling, so `samples.top_p` is refused. A voice is a
prefix: a prompts file's `audio` needs its words' times in the JSON beside it (`prefix.read_alignments`); a
held-out item's voice is the first seconds of another item of its speaker with the words that end inside them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from dia_tpu.config import Config, SamplesConfig, published, run_sampling
from dia_tpu.data.audio import load_audio
from dia_tpu.errors import UserError
from dia_tpu.evaluation.judge import Prompt
from dia_tpu.evaluation.prompts import Request, check_codebooks
from dia_tpu.families.dia2.assets import decode, load_mimi, load_tokenizer, text_ids
from dia_tpu.families.dia2.config import Dia2Config
from dia_tpu.families.dia2.data import tagged_words
from dia_tpu.families.dia2.decode import Dia2Sampling, Prefix, generate, prefix_plan
from dia_tpu.families.dia2.model import Dia2Model
from dia_tpu.families.dia2.prefix import load_prefix
from dia_tpu.families.dia2.script import script_entries, timed_entries
from dia_tpu.families.dia2.source import source_folder


@dataclasses.dataclass(frozen=True)
class Dia2Settings:
    sampling: Dia2Sampling
    max_seconds: float | None  # None: all the model's context holds


def for_training(cfg: Config, model_config: Dia2Config, device: torch.device | str) -> Dia2Speech:
    """The speech of the run's model, its tokenizer and codec named by `model.pretrained`'s folder."""
    return Dia2Speech(source_folder(cfg.model.pretrained), model_config, device, run_sampling(cfg, "dia2"))


class Dia2Speech:
    def __init__(
        self, folder: Path, model_config: Dia2Config, device: torch.device | str, defaults: dict | None = None
    ):
        """`defaults`: the sampling settings() falls back to (a run's, or a folder's generation_config.json);
        upstream's for what they leave out."""
        self.config, self.defaults = model_config, published("dia2") | (defaults or {})
        tokenizer = load_tokenizer(folder, model_config)
        self.tokenize = lambda words: tokenizer.encode(words, add_special_tokens=False)
        self.ids = text_ids(model_config, tokenizer)
        self.codec = load_mimi(folder, model_config, device)
        self.rate, self.frame_rate = self.codec.config.sampling_rate, self.codec.config.frame_rate

    def settings(self, s: SamplesConfig, max_seconds: float | None) -> Dia2Settings:
        if s.top_p is not None:
            raise UserError(f"samples.top_p={s.top_p}: Dia2 samples by top-k alone; leave top_p out")
        given = {key: value for key in self.defaults if (value := getattr(s, key)) is not None}
        return Dia2Settings(Dia2Sampling(**(self.defaults | given)), max_seconds)

    def load(self, request: Request) -> tuple[Prompt, Prefix | None]:
        prompt, voice = dataclasses.replace(request.prompt), None
        if request.reference is not None:
            prompt.reference = load_audio(request.reference, self.rate)
        if request.reference_codes is not None:
            prompt.reference = self._decode(request.reference_codes, prompt.id)
        if request.audio is not None:
            voice = load_prefix(self.codec, [Path(request.audio)], self.tokenize, self.config.codebooks)
            prompt.voice = load_audio(request.audio, self.rate)
        if request.voice_codes is not None:
            frames = len(request.voice_codes)
            words = [w for w in request.voice_words or () if int(w["end"]) <= frames]
            if words:  # a clip cut before its first word ends gives no voice
                codes = torch.from_numpy(request.voice_codes.astype(np.int64)).T
                timed = timed_entries(tagged_words(words, self.frame_rate), self.tokenize, None, self.frame_rate)
                voice = prefix_plan([(codes, *timed)])
                prompt.voice = self._decode(request.voice_codes, prompt.id)
        return prompt, voice

    def check(self, prompt: Prompt, voice: Prefix | None, settings: Dia2Settings) -> None:
        if not any(entry.tokens for entry in script_entries(prompt.text, self.tokenize, self.ids, self.frame_rate)):
            raise ValueError("no words to say")
        self._limit(voice, settings, strict=True)

    def generate(self, model: Dia2Model, prompt: Prompt, voice: Prefix | None, settings: Dia2Settings, seed: int):
        entries = script_entries(prompt.text, self.tokenize, self.ids, self.frame_rate)
        sampling = dataclasses.replace(settings.sampling, seed=seed)
        limit = self._limit(voice, settings, strict=False)
        spoken = generate(model, entries, self.ids, sampling, limit, voice)
        words = sum(1 for entry in [*(voice.entries if voice else ()), *entries] if entry.tokens)
        return decode(self.codec, spoken.codes).numpy(), spoken.codes.T.numpy(), len(spoken.words) >= words

    def blank(self, plain: Dia2Model) -> Dia2Model:
        return Dia2Model(plain.config).eval()

    def _limit(self, voice: Prefix | None, settings: Dia2Settings, strict: bool) -> int:
        """The frames to generate: max_seconds' worth, which (`strict`) must fit the context after the prefix, or
        else are cut to fit (a held-out clip's prefix is not the user's choice)."""
        used = voice.codes.shape[1] if voice is not None else 0
        room = self.config.max_context - used - max(self.config.delays) - 1
        if room < 1:
            raise ValueError(f"the voice prefix's {used} frames fill the model's context of {self.config.max_context}")
        if settings.max_seconds is None:
            return room
        wanted = max(1, round(settings.max_seconds * self.frame_rate))
        if wanted > room and strict:
            after = f" after the {used}-frame voice prefix" if voice is not None else ""
            raise ValueError(
                f"max_seconds={settings.max_seconds} needs {wanted} frames but the model's context holds {room} "
                f"({room / self.frame_rate:.1f} s){after}"
            )
        return min(wanted, room)

    def _decode(self, codes: np.ndarray, item: str) -> np.ndarray:
        check_codebooks(codes, self.config.codebooks, item)
        return decode(self.codec, torch.from_numpy(codes.astype(np.int64)).T).numpy()
