"""`dia-tpu generate` with a Dia2 model: each script through the tokenizer and the script rules, generated
(`dia_tpu.families.dia2.decode`), decoded by the model's Mimi codec and written as audio."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import soundfile as sf
import torch

from dia_tpu.families.dia2.assets import decode, load_mimi, load_tokenizer, text_ids
from dia_tpu.families.dia2.decode import Dia2Sampling, generate
from dia_tpu.families.dia2.files import read_model
from dia_tpu.families.dia2.prefix import load_prefix
from dia_tpu.families.dia2.script import script_entries


def speak(
    folder: str | Path,
    texts: list[str],
    outputs: list[Path],
    sampling: Dia2Sampling,
    device: str | torch.device = "cpu",
    max_seconds: float | None = None,
    trust_remote_code: bool = False,
    prefixes: list[Path] = (),
) -> None:
    """Write each script of `texts` to its file of `outputs` (script i with seed sampling.seed + i), speaking
    until its words are said or `max_seconds` (default: the model's longest context), after the voice prefix of
    `prefixes` (speaker 1's recording, then speaker 2's; `prefix.load_prefix`) when given."""
    folder = Path(folder)
    model = read_model(folder).to(device).eval()
    cfg = model.config
    tokenizer = load_tokenizer(folder, cfg, trust_remote_code)
    ids = text_ids(cfg, tokenizer)
    codec = load_mimi(folder, cfg, device)
    rate, frame_rate = codec.config.sampling_rate, codec.config.frame_rate
    limit = max(round(max_seconds * frame_rate), 1) if max_seconds else None
    tokenize = lambda words: tokenizer.encode(words, add_special_tokens=False)  # noqa: E731
    prefix = load_prefix(codec, [Path(p) for p in prefixes], tokenize, cfg.codebooks) if prefixes else None
    for index, (text, path) in enumerate(zip(texts, outputs, strict=True)):
        entries = script_entries(text, tokenize, ids, frame_rate)
        spoken = generate(model, entries, ids, dataclasses.replace(sampling, seed=sampling.seed + index), limit, prefix)
        wave = decode(codec, spoken.codes).numpy()
        sf.write(path, wave, rate)
        words = sum(1 for entry in entries if entry.tokens)
        print(f"wrote {path} ({len(wave) / rate:.2f} s at {rate} Hz; {len(spoken.words)} of {words} words said)")
