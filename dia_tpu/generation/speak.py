"""`dia-tpu generate`: scripts, from the command line or a text file, to wav files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import soundfile as sf
import torch

from dia_tpu.artifacts import open_artifact
from dia_tpu.config import described, sampling_problems, unguided_warning
from dia_tpu.errors import UserError
from dia_tpu.families import is_dia2_source
from dia_tpu.families.dia2.decode import dia2_problems
from dia_tpu.families.dia2.source import source_folder
from dia_tpu.families.dia2.speak import speak as dia2_speak
from dia_tpu.generation.defaults import dia2_sampling
from dia_tpu.generation.synthesize import (
    GenerationSettings,
    load_voice_prompt,
    sampling_of,
    synthesize,
    with_model_sampling,
)
from dia_tpu.model.load import language_tags_of, load_for_inference


def read_scripts(path: str | Path) -> list[str]:
    """The scripts of a text file, one per non-empty line."""
    source = Path(path)
    if source.is_dir():
        raise UserError(f"--text-file {source} is a folder; give a text file with one script per line")
    if not source.is_file():
        raise FileNotFoundError(f"--text-file not found: {source}")
    texts = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise UserError(f"--text-file {source} holds no scripts")
    return texts


def check_flags(settings: GenerationSettings, batch_size: int) -> None:
    """Refuse, naming each flag and what it allows, settings generation cannot use."""
    if problems := flag_problems(settings, batch_size):
        raise UserError("; ".join(problems))


def flag_problems(settings: GenerationSettings, batch_size: int) -> list[str]:
    problems = sampling_problems(settings, lambda field: "--" + field.replace("_", "-"))
    if batch_size < 1:
        problems.append(f"--batch-size must be >= 1, got {batch_size}")
    return problems


def check_output_file(path: Path) -> None:
    """Refuse, before anything is generated, an output the audio could not be written to: a folder, a suffix
    that names no sound format, a folder that cannot be made or written."""
    if path.is_dir():
        raise UserError(f"--out {path} is a folder: give a file name ending in .wav (or .flac, .ogg)")
    if path.suffix.lstrip(".").upper() not in sf.available_formats():
        raise UserError(
            f"--out {path}: {path.suffix or 'no suffix'} names no sound format; end it in .wav (or .flac, .ogg)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {path}: its folder cannot be made ({err.strerror or err})") from err
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"--out {path}: its folder {path.parent} is not writable")


def write_speech(
    model_source: str,
    texts: list[str],
    outputs: list[Path],
    settings: GenerationSettings,
    *,
    adapter: str | None = None,
    audio_prompt: str | None = None,
    prompt_transcript: str | None = None,
    batch_size: int = 4,
    device: str | None = None,
    dia2: dict | None = None,
    dia_flags: list[str] = (),
    dia2_flags: list[str] = (),
    trust_remote_code: bool = False,
    prefixes: list[str] = (),
) -> None:
    """`dia-tpu generate`: load the model once, synthesize `texts` `batch_size` at a time (text i with seed
    settings.seed + i) and write each to its wav in `outputs`, printing what was written. Sampling left out
    (None) is the model's own (its generation_config.json, a checkpoint's run's), then the family's published.
    A Dia2 model samples with the flags in `dia2` (None: not given) instead of `settings`; `dia_flags` and
    `dia2_flags` are the flags given that only one family takes, refused for the other."""
    dia2_model = is_dia2_source(str(model_source))
    if dia2_model:
        folder = source_folder(str(model_source))
        dia2 = dia2_sampling(folder, dia2 or {})
        problems = [f"{', '.join(dia_flags)}: Dia's flags; {model_source} is a Dia2 model"] if dia_flags else []
        problems += dia2_problems(dia2)
        if adapter is not None or audio_prompt is not None:
            problems.append("--adapter and --audio-prompt take Dia models only so far, not Dia2")
    else:
        problems = [f"{', '.join(dia2_flags)}: Dia2's flags; {model_source} is a Dia model"] if dia2_flags else []
        problems += flag_problems(settings, batch_size)
    if problems:
        raise UserError("; ".join(problems))
    for path in outputs:
        check_output_file(path)
    if (audio_prompt is None) != (prompt_transcript is None):
        raise UserError("--audio-prompt and --prompt-transcript go together: the model reads the transcript first")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dia2_model:
        print("sampling: " + described(dataclasses.asdict(dia2)))
        dia2_speak(folder, texts, outputs, dia2, device, settings.max_seconds, trust_remote_code, prefixes)
        return
    artifact = open_artifact(model_source)
    model, codec = load_for_inference(artifact, device, adapter=adapter)
    settings = with_model_sampling(dataclasses.replace(settings, language_tags=language_tags_of(artifact)), model)
    print("sampling: " + described(sampling_of(settings)))
    trained = artifact.config.train.unconditional_frac if artifact.config is not None else None
    if note := unguided_warning(str(model_source), settings.guidance_scale, trained):
        print(note)
    prompt = None
    if audio_prompt is not None:
        prompt = load_voice_prompt(codec, audio_prompt, prompt_transcript, model_config=model.config)
    rate = codec.config.sampling_rate
    for start in range(0, len(texts), batch_size):
        batch = dataclasses.replace(settings, seed=settings.seed + start)
        waves = synthesize(model, codec, texts[start : start + batch_size], batch, prompt)
        for wave, path in zip(waves, outputs[start : start + batch_size], strict=True):
            sf.write(path, wave, rate)
            note = "" if len(wave) else ": empty, the model ended the audio at once (EOS first)"
            print(f"wrote {path} ({len(wave) / rate:.2f} s at {rate} Hz){note}")
