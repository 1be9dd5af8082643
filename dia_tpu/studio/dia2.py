"""The studio's Dia2 models: an export or upstream-format folder, or a checkpoint of a Dia2 run (LoRA folded in),
spoken through the Dia2 speech training's samples use (`evaluation.dia2_speech`), so a seed gives the audio
`dia-tpu generate` gives at the same settings.

A voice to continue is an uploaded recording and what is said in it: its words are placed in it by the espeak
aligner (`dia-tpu prepare`'s), which a Dia2 voice prefix needs, and its first speaker tag says whose voice it is.
Sampling left unset is the model's own (a checkpoint's run's, a folder's generation_config.json), then upstream's
(audio 0.8 / top-k 50, guidance 2.0); Dia2 has no top-p.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dia_tpu.artifacts import CONFIG_FILE
from dia_tpu.artifacts.opening import is_checkpoint
from dia_tpu.config import SamplesConfig, read_saved
from dia_tpu.data.audio import load_audio
from dia_tpu.errors import UserError
from dia_tpu.evaluation.dia2_speech import Dia2Speech
from dia_tpu.evaluation.judge import Prompt
from dia_tpu.families.dia2.adapters import merged
from dia_tpu.families.dia2.checkpoint import load_trained
from dia_tpu.families.dia2.data import SPEAKER_TAGS
from dia_tpu.families.dia2.decode import prefix_plan
from dia_tpu.families.dia2.files import read_model
from dia_tpu.families.dia2.prefix import recording_plan
from dia_tpu.families.dia2.source import source_folder
from dia_tpu.families.dia2.timings import aligned
from dia_tpu.generation.defaults import own_sampling
from dia_tpu.listen.align import load_aligner
from dia_tpu.listen.asr import TimedWord


class Dia2Voice:
    """A loaded Dia2 model with its tokenizer and Mimi, ready to speak a script."""

    def __init__(self, source: str, device: str):
        folder = Path(source)
        if is_checkpoint(folder) and (folder / CONFIG_FILE).is_file():  # a run's checkpoint: its base has the assets
            model, assets = load_trained(folder), source_folder(read_saved(folder / CONFIG_FILE).model.pretrained)
        else:
            model, assets = read_model(source_folder(source)), source_folder(source)
        defaults = own_sampling(folder if folder.is_dir() else assets, "dia2")
        self.model = merged(model).to(device).eval()
        self.speech = Dia2Speech(assets, self.model.config, device, defaults)

    def speak(
        self,
        text: str,
        prompt_audio: str | None,
        prompt_transcript: str,
        sampling: dict,
        seed: int,
        max_seconds: float | None,
    ) -> tuple[int, np.ndarray, dict]:
        """(rate, wave, the sampling used) of `text` after the voice in `prompt_audio` (what is said in it:
        `prompt_transcript`); `sampling`: guidance_scale, temperature, top_k, each None for the model's own."""
        settings = self.speech.settings(SamplesConfig(**sampling), max_seconds)
        prompt = Prompt(id="studio", text=text)
        voice = self._voice(prompt_audio, prompt_transcript) if prompt_audio else None
        self.speech.check(prompt, voice, settings)
        wave, _, _ = self.speech.generate(self.model, prompt, voice, settings, seed)
        used = {**dataclasses.asdict(settings.sampling), "seed": seed}
        return self.speech.rate, wave, used

    def _voice(self, audio: str, transcript: str):
        if not transcript.strip():
            raise UserError("a Dia2 voice to continue needs what is said in it: its words are placed in the audio")
        wave = load_audio(audio, self.speech.rate)
        espeak = load_aligner("espeak")
        said = aligned(transcript, lambda words: espeak.align(wave, self.speech.rate, words))
        words = [TimedWord(word.text, word.start, word.end) for word in said]
        tag = SPEAKER_TAGS[said[0].speaker]
        plan = recording_plan(
            self.speech.codec, wave, words, self.speech.tokenize, self.speech.config.codebooks, tag, "the voice"
        )
        return prefix_plan([plan])
