"""What the studio offers and how it speaks: the offered models and adapters, the loaded models (bounded,
least recently used dropped), one script to audio through `dia-tpu generate`'s path, and a run's models with
what was logged about them."""

from __future__ import annotations

import shlex
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dia_tpu.artifacts import RunFolder, completion_mark, open_artifact
from dia_tpu.errors import UserError
from dia_tpu.studio.dia2 import Dia2Voice

NO_ADAPTER = "none"


def refusal(kind: str, value: object) -> str:
    """The one answer to a value the studio does not offer: the same whether or not such a path exists, so the
    page cannot be used to probe the server's files."""
    flag = f"--{kind} {shlex.quote(str(value))}"
    return f'"{value}" is not one of the {kind}s this studio offers; start it with {flag} to offer it'


@dataclass(frozen=True)
class Offer:
    """What the studio serves: the models named with --model, the run's (asked again on every request, so a
    checkpoint saved while the studio runs is offered and one rotated away is not) and the adapters named with
    --adapter. Values are compared as the exact strings listed: resolving them would let a request probe paths."""

    sources: tuple[str, ...] = ()
    run_dir: str | None = None
    adapters: tuple[str, ...] = ()

    def models(self) -> list[str]:
        return [*(run_models(self.run_dir) if self.run_dir else []), *self.sources]

    def model(self, value: object) -> str:
        if value not in self.models():
            raise UserError(refusal("model", value))
        return str(value)

    def adapter(self, value: object) -> str | None:
        if value in (None, "", NO_ADAPTER):
            return None
        if value not in self.adapters:
            raise UserError(refusal("adapter", value))
        return str(value)


def load_model(source: str, adapter: str | None, device: str) -> tuple | Dia2Voice:
    """(model, codec, language tags) through `dia-tpu generate`'s own loader; a Dia2 model as a `Dia2Voice`."""
    from dia_tpu.families import is_dia2_source
    from dia_tpu.model.load import language_tags_of, load_for_inference

    if is_dia2_source(source):
        if adapter is not None:
            raise UserError(
                f"{source} is a Dia2 model: --adapter applies to Dia models (a Dia2 run's checkpoint has its own)"
            )
        return Dia2Voice(source, device)
    artifact = open_artifact(source)
    model, codec = load_for_inference(artifact, device, adapter=adapter)
    return model, codec, language_tags_of(artifact)


class Models:
    """The offered models (with their codecs and language tags) by (source, adapter), at most `limit` loaded at
    once: loading another drops the least recently used first, so its memory is free for the new one."""

    def __init__(
        self, device: str, offer: Offer, limit: int = 2, load: Callable[[str, str | None, str], tuple] = load_model
    ):
        if limit < 1:
            raise UserError(f"--max-models {limit}: the studio needs at least one model loaded to generate")
        self.device, self.offer, self.limit, self.load = device, offer, limit, load
        self._loaded: OrderedDict[tuple[str, str | None], tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: str, adapter: str | None = None) -> tuple:
        key = (self.offer.model(source), self.offer.adapter(adapter))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
            else:
                while len(self._loaded) >= self.limit:
                    self._loaded.popitem(last=False)
                self._loaded[key] = self.load(*key, self.device)
            return self._loaded[key]

    def loaded(self) -> list[tuple[str, str | None]]:
        """The (source, adapter) pairs held, least recently used first."""
        with self._lock:
            return list(self._loaded)


def speak(
    models: Models,
    source: str,
    adapter: str | None,
    text: str,
    prompt_audio: str | None,
    prompt_transcript: str,
    guidance_scale: float | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int,
    max_seconds: float | None,
) -> tuple[int, np.ndarray, dict]:
    """One script to (rate, 16-bit wave, the sampling used) as `dia-tpu generate --seed SEED` writes it;
    ValueError/FileNotFoundError name what is wrong. Sampling left None is the model's own, then its family's
    published settings, as generate's (Dia2 has no top-p: it is not read for a Dia2 model)."""
    from dia_tpu.config import sampling_problems
    from dia_tpu.generation.synthesize import (
        GenerationSettings,
        load_voice_prompt,
        sampling_of,
        synthesize,
        with_model_sampling,
    )

    if not source:
        raise UserError("choose a model from the list: the studio offers those named with --model and the run's")
    if not text or not text.strip():
        raise UserError("the script is empty: type what the speakers say, with [S1] and [S2]")
    loaded = models.get(source, adapter)
    if isinstance(loaded, Dia2Voice):
        given = {"guidance_scale": guidance_scale, "temperature": temperature, "top_k": top_k}
        rate, wave, used = loaded.speak(
            text.strip(), prompt_audio, prompt_transcript or "", given, int(seed), max_seconds or None
        )
        return rate, sixteen_bits(wave), used
    model, codec, tags = loaded
    settings = GenerationSettings(
        guidance_scale=guidance_scale,
        temperature=temperature,
        top_p=top_p,
        top_k=None if top_k is None else int(top_k),
        seed=int(seed),
        max_seconds=max_seconds or None,
        language_tags=tags,
    )
    settings = with_model_sampling(settings, model)
    if problems := sampling_problems(settings, lambda field: field.replace("_", " ")):
        raise UserError("; ".join(problems))
    prompt = None
    if prompt_audio:
        prompt = load_voice_prompt(codec, prompt_audio, prompt_transcript or "", model_config=model.config)
    (wave,) = synthesize(model, codec, [text.strip()], settings, prompt)
    return codec.config.sampling_rate, sixteen_bits(wave), sampling_of(settings)


def sixteen_bits(wave: np.ndarray) -> np.ndarray:
    """16-bit samples as `dia-tpu generate`'s wav holds them: given floats, Gradio would rescale them to full scale."""
    return np.clip(np.round(wave * 32767), -32768, 32767).astype(np.int16)


def wav_bytes(rate: int, wave: np.ndarray, sampling: dict) -> bytes:
    """A 16-bit wav file of `wave`, the sampling that made it in its comment (what a download keeps)."""
    import io
    import json

    import soundfile as sf

    out = io.BytesIO()
    with sf.SoundFile(out, "w", rate, 1 if wave.ndim == 1 else wave.shape[1], "PCM_16", format="WAV") as f:
        f.comment = json.dumps({"dia_tpu_sampling": sampling})
        f.write(wave)
    return out.getvalue()


def run_models(run_dir: str | Path) -> list[str]:
    """A run's models to pick from: its kept checkpoints (oldest first), best/ and final/ when present."""
    run = RunFolder(run_dir)
    found = [str(p) for p in run.complete_checkpoints()]
    return found + [str(p) for p in (run.best, run.final) if p.is_dir()]


def evaluation_figures(source: str) -> str:
    """What the run logged about a checkpoint of it: the eval loss and the automatic evaluation's figures at
    its step (one line; empty for models outside a run)."""
    from dia_tpu.report import read_scalars

    mark = completion_mark(Path(source))  # a complete checkpoint (or best/) of a run, and its step
    if mark is None:
        return ""
    step = mark["step"]
    scalars = read_scalars(RunFolder.holding(source).logs)
    figures = [
        f"{tag} {values[step]:.3f}"
        for tag, values in sorted(scalars.items())
        if tag.startswith(("eval/loss", "audio/")) and step in values and "_cb" not in tag
    ]
    return f"step {step}: " + (", ".join(figures) if figures else "nothing logged at this step")
