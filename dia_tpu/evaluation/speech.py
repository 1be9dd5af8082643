"""How each model family speaks for training's samples and `eval.audio`: its codec's rates, its sampling settings
from `samples.*`, prompts and voices loaded for it, their check before the first step, and one prompt generated
as (wave, codes, ended).

`samples.guidance_scale`, `temperature`, `top_p` and `top_k` left out (null) mean the family's published
defaults: Dia-1.6B's for Dia (`dia_tpu.config.SAMPLING`), upstream's for Dia2 (`dia2_speech`).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Protocol

import torch
from transformers import DiaForConditionalGeneration

from dia_tpu.config import Config, SamplesConfig, run_sampling
from dia_tpu.evaluation.judge import Prompt
from dia_tpu.evaluation.prompts import Request, generate, load_request
from dia_tpu.generation.synthesize import GenerationSettings, check_request, script_for
from dia_tpu.model.codec import build_codec
from dia_tpu.model.shapes import restore_attention_scale


class Speech(Protocol):
    rate: int  # audio samples per second
    frame_rate: float  # codec frames per second

    def settings(self, s: SamplesConfig, max_seconds: float | None) -> object:
        """The family's sampling settings from `samples.*` (null: its defaults), with a length limit."""

    def load(self, request: Request) -> tuple[Prompt, object | None]:
        """The prompt with its audio at the codec's rate, and its voice (a prompt or prefix) for the model."""

    def check(self, prompt: Prompt, voice, settings) -> None:
        """Raise ValueError (or UserError) naming what of the prompt does not fit the model."""

    def generate(self, model: torch.nn.Module, prompt: Prompt, voice, settings, seed: int):
        """(wave, codes [frames, codebooks], whether it ended before the limit) for one prompt."""

    def blank(self, plain: torch.nn.Module) -> torch.nn.Module:
        """A new CPU model of `plain`'s config, to copy live weights into."""


# Family name -> the module whose `for_training` gives its speech for a run.
SPEECH = {"dia": "dia_tpu.evaluation.speech", "dia2": "dia_tpu.evaluation.dia2_speech"}


def speech_for(family: str, cfg: Config, model_config, device: torch.device | str) -> Speech:
    """How a run's model of `family` speaks, its codec on `device`."""
    return importlib.import_module(SPEECH[family]).for_training(cfg, model_config, device)


def speak_each(speech: Speech, model: torch.nn.Module, prompts: list, settings, seeds: list[int]):
    """Waves, codes and endings of each (prompt, voice) of `prompts`, one at a time, prompt i with `seeds[i]`."""
    spoken = [
        speech.generate(model, prompt, voice, settings, seed)
        for (prompt, voice), seed in zip(prompts, seeds, strict=True)
    ]
    return tuple(list(part) for part in zip(*spoken, strict=True)) if spoken else ([], [], [])


def for_training(cfg: Config, model_config, device: torch.device | str) -> DiaSpeech:
    return DiaSpeech(cfg, model_config, device)


class DiaSpeech:
    def __init__(self, cfg: Config, model_config, device: torch.device | str):
        self.config, self.language_tags = model_config, cfg.data.language_tags
        self.defaults = run_sampling(cfg, "dia")
        self.codec = build_codec(cfg.model).to(device)
        self.rate = self.codec.config.sampling_rate
        self.frame_rate = self.rate / self.codec.config.hop_length

    def settings(self, s: SamplesConfig, max_seconds: float | None) -> GenerationSettings:
        """`s`'s sampling where set, else the run's (what its exports carry)."""
        chosen = {
            key: value if (value := getattr(s, key)) is not None else default for key, default in self.defaults.items()
        }
        return GenerationSettings(**chosen, max_seconds=max_seconds, language_tags=self.language_tags)

    def load(self, request: Request):
        return load_request(request, self.codec, self.config)

    def check(self, prompt: Prompt, voice, settings: GenerationSettings) -> None:
        check_request(self.config, [script_for(prompt.text, voice)], settings, self.frame_rate, voice)

    def generate(self, model, prompt: Prompt, voice, settings: GenerationSettings, seed: int):
        seeded = dataclasses.replace(settings, seed=seed)
        waves, codes, ended = generate(model, self.codec, [(prompt, voice)], seeded, batch_size=1)
        return waves[0], codes[0], ended[0]

    def blank(self, plain: DiaForConditionalGeneration) -> DiaForConditionalGeneration:
        model = DiaForConditionalGeneration(plain.config).eval()
        restore_attention_scale(model)  # a model built from a config starts at scale 1
        return model
