"""The prompts of an evaluation and their generation: a prompts file, the held-out items of a prepared dataset,
their audio loaded at a model's codec rate, and generation with generate's seeds (prompt i: seed + i).

A prompts file is a text file (one script per line) or JSON lines with `text` and optionally `id`,
`reference` (a recording of the text: its length and voice are compared), `audio` and `transcript` (a voice
prompt to clone). A prepared dataset gives its held-out items: each item's own codes as the reference and,
for cloning, the first seconds of another held-out item of the same speaker as the voice prompt.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import torch

from dia_tpu.artifacts import open_artifact
from dia_tpu.artifacts.names import file_name
from dia_tpu.data.audio import decode, load_audio
from dia_tpu.data.dataset import split_tables
from dia_tpu.data.shards import read_prepare_info
from dia_tpu.errors import UserError
from dia_tpu.evaluation.judge import Prompt
from dia_tpu.evaluation.text import spoken_text
from dia_tpu.generation.synthesize import (
    GenerationSettings,
    VoicePrompt,
    check_request,
    load_voice_prompt,
    script_for,
    synthesize_codes,
)


@dataclasses.dataclass
class Request:
    """A prompt as read from the prompts file: its audio files are loaded per model (at its codec's rate)."""

    prompt: Prompt
    reference: str | None = None  # audio files
    audio: str | None = None
    transcript: str | None = None  # of the voice prompt
    reference_codes: np.ndarray | None = None  # codes from a prepared dataset, decoded with each model's codec
    voice_codes: np.ndarray | None = None
    voice_words: list[dict] | None = None  # the voice clip's timed words, where the dataset has them (Dia2's)


# The most of a held-out clip used as another item's voice prompt.
VOICE_SECONDS = 5.0


def dataset_prompts(dataset: str | Path, model: str, limit: int | None = None, clone: bool = True) -> list[Request]:
    """The held-out items of a prepared dataset as prompts (see the module's docstring)."""
    from datasets import load_from_disk

    info = read_prepare_info(dataset)  # a clear error when it is not a prepared dataset
    whole = load_from_disk(str(dataset))
    config = open_artifact(model).config
    table = whole
    if config is not None and (config.data.eval_size or config.data.eval_speakers):
        data = dataclasses.replace(config.data, dataset=str(dataset), eval_dataset=None)
        table = split_tables(dataclasses.replace(config, data=data))[1]
    requests = held_out_requests(table, chars_per_second(whole), info["frame_rate"], limit, clone)
    if not requests:
        raise UserError(f"--dataset {dataset}: no held-out items to evaluate")
    _check_unique([r.prompt.id for r in requests], f"--dataset {dataset}: items")
    return requests


def held_out_requests(table, pace: dict, frame_rate: float, limit: int | None, clone: bool) -> list[Request]:
    """Prompts from a table of prepared items: each item's codes as its reference and, with `clone`, the first
    `VOICE_SECONDS` of the next item of the same speaker as its voice prompt."""
    table = table.with_format(None)
    timed = "words" in table.column_names
    rows = list(table.select_columns(["text", "speaker", "source_id", *(["words"] if timed else [])]))[:limit]
    codes = table.with_format("numpy", columns=["codes"])
    voice_frames = round(VOICE_SECONDS * frame_rate)
    requests = []
    for i, row in enumerate(rows):
        prompt = Prompt(file_name(row["source_id"]), row["text"], chars_per_second=pace.get(row["speaker"], pace[None]))
        others = [j for j in range(i + 1, len(rows)) if rows[j]["speaker"] == row["speaker"]]
        others += [j for j in range(i) if rows[j]["speaker"] == row["speaker"]]
        voice = others[0] if others and clone else None
        requests.append(
            Request(
                prompt,
                reference_codes=np.asarray(codes[i]["codes"]),
                voice_codes=None if voice is None else np.asarray(codes[voice]["codes"])[:voice_frames],
                transcript=None if voice is None else rows[voice]["text"],
                voice_words=None if voice is None or not timed else rows[voice]["words"],
            )
        )
    return requests


def with_pace(requests: list[Request], pace: dict) -> list[Request]:
    """Prompts without a reference recording, expected to last as long as their text takes at the pace of the
    speaker their first tag names (`[S1]` is the data's speaker "S1" when there is one), else of all speakers."""
    out = []
    for request in requests:
        prompt = request.prompt
        if request.reference is None and request.reference_codes is None and pace:
            tag = re.match(r"\s*\[([^\]]+)\]", prompt.text)
            speed = pace.get(tag[1] if tag else None, pace[None])
            request = dataclasses.replace(request, prompt=dataclasses.replace(prompt, chars_per_second=speed))
        out.append(request)
    return out


def run_pace(artifact) -> dict:
    """The pace of a run's training data (`chars_per_second`), when the model is a run's and its dataset is
    here; else {} (prompts keep the default pace)."""
    from datasets import load_from_disk

    config = artifact.config
    if config is None or not (Path(config.data.dataset) / "dataset_info.json").is_file():
        return {}
    return chars_per_second(load_from_disk(config.data.dataset))


def chars_per_second(table) -> dict:
    """Each speaker's pace in characters of spoken words per second, and everyone's under None."""
    chars, seconds = {}, {}
    for text, speaker, duration in zip(table["text"], table["speaker"], table["duration"], strict=True):
        for key in (speaker, None):
            chars[key] = chars.get(key, 0) + len(spoken_text(text))
            seconds[key] = seconds.get(key, 0.0) + float(duration)
    return {key: chars[key] / seconds[key] for key in chars if seconds[key] > 0}


def read_prompts(path: str | Path) -> list[Request]:
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"--prompts not found: {source}")
    lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise UserError(f"--prompts {source} holds no prompts")
    if source.suffix != ".jsonl":
        return [Request(Prompt(f"line_{i:04d}", text)) for i, text in enumerate(lines, 1)]
    requests = []
    for i, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
            text = item["text"]
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{source} line {i}: not a JSON object with a 'text' ({err})") from err
        if ("audio" in item) != ("transcript" in item):
            raise UserError(f"{source} line {i}: 'audio' (a voice prompt) and 'transcript' go together")
        files = {key: str((source.parent / item[key]).resolve()) for key in ("reference", "audio") if key in item}
        for key, file in files.items():
            if not Path(file).is_file():
                raise FileNotFoundError(f"{source} line {i}: {key} not found: {file}")
        # The id names the utterance's wav: only `file_name` turns it into one (`../x` or `/tmp/x` stay inside).
        prompt = Prompt(file_name(str(item.get("id", f"line_{i:04d}"))), text)
        requests.append(Request(prompt, files.get("reference"), files.get("audio"), item.get("transcript")))
    _check_unique([r.prompt.id for r in requests], f"{source}: ids")
    return requests


def _check_unique(ids: list[str], what: str) -> None:
    """Refuse ids that name the same file (two equal ids, or two that become one file name), naming them."""
    seen: dict[str, int] = {}
    for i, name in enumerate(ids, 1):
        if name in seen:
            raise UserError(f"{what} {seen[name]} and {i} both give the file name {name!r}; make the ids distinct")
        seen[name] = i


def load_request(request: Request, codec, model_config) -> tuple[Prompt, VoicePrompt | None]:
    """The prompt with its audio at the codec's rate, and its voice prompt encoded for the model of `model_config`
    (its DiaConfig)."""
    rate, books = codec.config.sampling_rate, len(model_config.delay_pattern)
    prompt = dataclasses.replace(request.prompt)
    if request.reference is not None:
        prompt.reference = load_audio(request.reference, rate)
    if request.reference_codes is not None:
        check_codebooks(request.reference_codes, books, prompt.id)
        prompt.reference = decode(codec, torch.from_numpy(request.reference_codes.astype(np.int64)))
    voice = None
    if request.audio is not None:
        voice = load_voice_prompt(codec, request.audio, request.transcript, model_config=model_config)
        prompt.voice = load_audio(request.audio, rate)
    if request.voice_codes is not None:
        codes = torch.from_numpy(request.voice_codes.astype(np.int64))
        voice = VoicePrompt(codes=codes, transcript=request.transcript, source=f"the voice prompt of {prompt.id}")
        prompt.voice = decode(codec, codes)
    return prompt, voice


def check_codebooks(codes: np.ndarray, books: int, item: str) -> None:
    """A dataset item's codes must have the model's codebook count."""
    if codes.shape[1] != books:
        raise UserError(
            f"--dataset item {item} has {codes.shape[1]} codebooks but the model has {books}: "
            "evaluate with a dataset prepared with the model's codec"
        )


def generate(
    model, codec, prompts: list[tuple[Prompt, VoicePrompt | None]], settings: GenerationSettings, batch_size: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[bool]]:
    """Waves, codes and whether each ended with EOS (before the frame limit). Consecutive prompts with the
    same voice prompt (or none) run together, `batch_size` at a time; prompt i uses seed settings.seed + i,
    so its audio does not depend on the batch it ran in. The frame limit is settings.max_seconds, or less
    where a voice prompt leaves the decoder less room (a held-out clip's prompt is not the user's choice)."""
    frame_rate = codec.config.sampling_rate / codec.config.hop_length
    waves, codes, ended = [], [], []
    start = 0
    while start < len(prompts):
        voice = prompts[start][1]
        stop = start + 1
        while stop < len(prompts) and stop - start < batch_size and prompts[stop][1] is voice:
            stop += 1
        texts = [prompt.text for prompt, _ in prompts[start:stop]]
        scripts = [script_for(t, voice) for t in texts]
        limit = check_request(model.config, scripts, dataclasses.replace(settings, max_seconds=None), frame_rate, voice)
        if settings.max_seconds is not None:
            limit = min(limit, max(1, round(settings.max_seconds * frame_rate)))
        batch = dataclasses.replace(settings, seed=settings.seed + start, max_seconds=limit / frame_rate)
        for frames in synthesize_codes(model, texts, batch, frame_rate, voice):
            codes.append(frames.numpy())
            ended.append(len(frames) < limit)
            waves.append(decode(codec, frames))
        start = stop
    return waves, codes, ended
