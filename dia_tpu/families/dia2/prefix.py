"""Voice prefixes for Dia2 generation from files: a recording per speaker, each with its words' times.

Upstream transcribes a prefix's audio to find when each word starts; dia_tpu reads the times from a file beside
the audio: `CLIP.json` next to `CLIP.wav`, in moshi-finetune's form
`{"alignments": [[word, [start, end], speaker], ...]}` (seconds; the speaker is not read, the flag says whose
voice it is). The audio is encoded with the model's Mimi and lined up as upstream lines up its prefixes
(`decode.prefix_plan`): speaker 1's recording, then speaker 2's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import MimiModel

from dia_tpu.data.audio import load_audio
from dia_tpu.data.clips import parse_segments
from dia_tpu.errors import UserError
from dia_tpu.families.dia2.data import SPEAKER_TAGS
from dia_tpu.families.dia2.decode import Prefix, prefix_plan
from dia_tpu.families.dia2.script import Tokenize, timed_entries
from dia_tpu.listen.asr import TimedWord


def read_alignments(audio: Path) -> list[TimedWord]:
    """The timed words of `audio` from the JSON beside it; a missing or malformed file is one error naming it."""
    path = audio.with_suffix(".json")
    form = '{"alignments": [[word, [start, end], speaker], ...]} in seconds'
    if not path.is_file():
        raise UserError(f"{audio}: a voice prefix needs its words' times in {path} ({form})")
    try:
        value = json.loads(path.read_text())
        if not isinstance(value, dict) or "alignments" not in value:
            raise UserError("no 'alignments'")
        words = [TimedWord(s.text, s.start, s.end) for s in parse_segments(value)]
    except ValueError as err:  # UserError is one
        raise UserError(f"{path}: not word alignments ({form}): {err}") from err
    if not words:
        raise UserError(f"{path}: no words; a voice prefix needs at least one")
    if any(b.start < a.start for a, b in zip(words, words[1:], strict=False)) or any(w.end < w.start for w in words):
        raise UserError(f"{path}: the words' times are not in order")
    return words


def encode(codec: MimiModel, waves: np.ndarray, codebooks: int) -> torch.Tensor:
    """Equal-length mono audio [B, samples] at the codec's rate -> the first `codebooks` codebooks of its Mimi
    codes, [B, N, F] (residual quantizers: the same as the first N of all of them)."""
    with torch.no_grad():
        codes = codec.encode(torch.from_numpy(waves)[:, None].to(codec.device), num_quantizers=codebooks)
    return codes.audio_codes.cpu()


def load_prefix(codec: MimiModel, recordings: list[Path], tokenize: Tokenize, codebooks: int) -> Prefix:
    """Speaker 1's recording (and speaker 2's, if given) as one prefix: encoded, their words lined up."""
    planned = []
    for path, tag in zip(recordings, SPEAKER_TAGS.values(), strict=False):
        wave = load_audio(path, codec.config.sampling_rate)
        planned.append(recording_plan(codec, wave, read_alignments(path), tokenize, codebooks, tag, path))
    return prefix_plan(planned)


def recording_plan(
    codec: MimiModel, wave: np.ndarray, words: list[TimedWord], tokenize: Tokenize, codebooks: int, tag: str, where
) -> tuple:
    """One speaker's recording (mono at the codec's rate) and its timed words, as `decode.prefix_plan` takes it."""
    codes = encode(codec, wave[None], codebooks)[0]
    if words[-1].end * codec.config.frame_rate > codes.shape[1] + 1:
        raise UserError(f"{where}: its words end at {words[-1].end:.2f} s, after the audio")
    return (codes, *timed_entries(words, tokenize, tag, codec.config.frame_rate))
