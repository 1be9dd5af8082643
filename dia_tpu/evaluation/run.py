"""`dia-tpu evaluate`: the same prompts, generated with the same seeds and sampling settings by one or more
models, judged side by side.

    dia-tpu evaluate --model runs/x/best --model runs/x/final --prompts prompts.txt --out results/

Prompts are a text file (one script per line) or JSON lines with `text` and optionally `id`, `reference`
(a recording of the text: its length and voice are compared), `audio` and `transcript` (a voice prompt to
clone). Or `--dataset DIR`, a prepared dataset encoded with the models' codec: its held-out items as the
first model's run held them out (`data.eval_size`, `data.seed`; all items for a model without a run config),
each item's own audio as the reference and, for cloning, the first seconds of another held-out item of the
same speaker as the voice prompt.

It writes `OUT/rows.jsonl` (a row per model and utterance), `OUT/summary.json`, `OUT/summary.md` (a column
per model, also printed) and every utterance as `OUT/<model>/<id>.wav`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from dia_tpu.artifacts import open_artifact
from dia_tpu.data.audio import decode, load_audio
from dia_tpu.evaluation.judge import Judges, Prompt, judge, summarise
from dia_tpu.generation.speak import check_flags
from dia_tpu.generation.synthesize import (
    GenerationSettings,
    VoicePrompt,
    check_request,
    load_voice_prompt,
    script_for,
    synthesize_codes,
)
from dia_tpu.model.load import language_tags_of, load_for_inference


@dataclasses.dataclass
class Request:
    """A prompt as read from the prompts file: its audio files are loaded per model (at its codec's rate)."""

    prompt: Prompt
    reference: str | None = None  # audio files
    audio: str | None = None
    transcript: str | None = None  # of the voice prompt
    reference_codes: np.ndarray | None = None  # codes from a prepared dataset, decoded with each model's codec
    voice_codes: np.ndarray | None = None


# The most of a held-out clip used as another item's voice prompt.
VOICE_SECONDS = 5.0


def dataset_prompts(dataset: str | Path, model: str, limit: int | None = None, clone: bool = True) -> list[Request]:
    """The held-out items of a prepared dataset as prompts (see the module's docstring)."""
    from datasets import load_from_disk

    from dia_tpu.data.dataset import split_tables
    from dia_tpu.data.shards import read_prepare_info

    info = read_prepare_info(dataset)  # a clear error when it is not a prepared dataset
    config = open_artifact(model).config
    if config is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=str(dataset),
                                                                        eval_dataset=None))  # fmt: skip
        table = split_tables(config)[1] if config.data.eval_size else load_from_disk(str(dataset))
    else:
        table = load_from_disk(str(dataset))
    pace = chars_per_second(load_from_disk(str(dataset)))
    items = table.with_format("numpy", columns=["codes"])
    rows = list(table.select_columns(["text", "speaker", "source_id", "duration"]))[:limit]
    voice_frames = round(VOICE_SECONDS * info["frame_rate"])
    requests = []
    for i, row in enumerate(rows):
        prompt = Prompt(re.sub(r"[^\w.-]+", "_", row["source_id"]), row["text"],
                        chars_per_second=pace.get(row["speaker"], pace[None]))  # fmt: skip
        others = [j for j in range(len(rows)) if j != i and rows[j]["speaker"] == row["speaker"]] if clone else []
        voice = others[0] if others else None
        requests.append(Request(prompt, reference_codes=np.asarray(items[i]["codes"]),
                                voice_codes=None if voice is None else np.asarray(items[voice]["codes"])[:voice_frames],
                                transcript=None if voice is None else rows[voice]["text"]))  # fmt: skip
    if not requests:
        raise ValueError(f"--dataset {dataset}: no held-out items to evaluate")
    return requests


def chars_per_second(table) -> dict:
    """Each speaker's pace in characters of spoken words per second, and everyone's under None."""
    from dia_tpu.evaluation.text import spoken_text

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
        raise ValueError(f"--prompts {source} holds no prompts")
    if source.suffix != ".jsonl":
        return [Request(Prompt(f"line_{i:04d}", text)) for i, text in enumerate(lines, 1)]
    requests = []
    for i, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
            text = item["text"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{source} line {i}: not a JSON object with a 'text' ({err})") from err
        if ("audio" in item) != ("transcript" in item):
            raise ValueError(f"{source} line {i}: 'audio' (a voice prompt) and 'transcript' go together")
        files = {key: str((source.parent / item[key]).resolve()) for key in ("reference", "audio") if key in item}
        for key, file in files.items():
            if not Path(file).is_file():
                raise FileNotFoundError(f"{source} line {i}: {key} not found: {file}")
        prompt = Prompt(str(item.get("id", f"line_{i:04d}")), text)
        requests.append(Request(prompt, files.get("reference"), files.get("audio"), item.get("transcript")))
    return requests


def evaluate_models(models: list[str], requests: list[Request], out: str | Path, settings: GenerationSettings,
                    judges: Judges, batch_size: int = 4, device: str | None = None) -> dict[str, dict]:  # fmt: skip
    """Generate and judge `requests` with each model; write the files; returns {model label: summary}."""
    check_flags(settings, batch_size)
    out, device = Path(out), device or ("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    summaries, rows = {}, []
    for label, source in zip(labels(models), models, strict=True):
        artifact = open_artifact(source)
        model, codec = load_for_inference(artifact, device)
        rate = codec.config.sampling_rate
        prompts = [_loaded(r, codec, len(model.config.delay_pattern)) for r in requests]
        model_settings = dataclasses.replace(settings, language_tags=language_tags_of(artifact))
        waves, codes, ended = generate(model, codec, prompts, model_settings, batch_size)
        found = judge([p for p, _ in prompts], waves, codes, ended, rate, judges)
        for row, wave in zip(found, waves, strict=True):
            (out / label).mkdir(exist_ok=True)
            sf.write(out / label / f"{row['id']}.wav", wave, rate)
            rows.append({"model": label, "source": source, **row})
        summaries[label] = summarise(found)
        print(f"evaluated {source}: {len(found)} utterances")
    with open(out / "rows.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    (out / "summary.json").write_text(json.dumps({"judges": judges.names(), "models": summaries}, indent=2) + "\n")
    table = summary_table(summaries, judges)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out / 'rows.jsonl'}, {out / 'summary.json'}, {out / 'summary.md'}")
    return summaries


def _loaded(request: Request, codec, books: int) -> tuple[Prompt, VoicePrompt | None]:
    """The prompt with its audio at the codec's rate, and its voice prompt encoded."""
    rate = codec.config.sampling_rate
    prompt = dataclasses.replace(request.prompt)
    if request.reference is not None:
        prompt.reference = load_audio(request.reference, rate)
    if request.reference_codes is not None:
        _check_codebooks(request.reference_codes, books, prompt.id)
        prompt.reference = decode(codec, torch.from_numpy(request.reference_codes.astype(np.int64)))
    voice = None
    if request.audio is not None:
        voice = load_voice_prompt(codec, request.audio, request.transcript, books)
        prompt.voice = load_audio(request.audio, rate)
    if request.voice_codes is not None:
        codes = torch.from_numpy(request.voice_codes.astype(np.int64))
        voice = VoicePrompt(codes=codes, transcript=request.transcript, source=f"the voice prompt of {prompt.id}")
        prompt.voice = decode(codec, codes)
    return prompt, voice


def _check_codebooks(codes: np.ndarray, books: int, item: str) -> None:
    if codes.shape[1] != books:
        raise ValueError(f"--dataset item {item} has {codes.shape[1]} codebooks but the model has {books}: "
                         "evaluate with a dataset prepared with the model's codec")  # fmt: skip


def generate(model, codec, prompts: list[tuple[Prompt, VoicePrompt | None]], settings: GenerationSettings,
             batch_size: int) -> tuple[list[np.ndarray], list[np.ndarray], list[bool]]:  # fmt: skip
    """Waves, codes and whether each ended with EOS (before the frame limit). Consecutive prompts with the
    same voice prompt (or none) run together, `batch_size` at a time; prompt i uses seed settings.seed + i,
    so its audio does not depend on the batch it ran in."""
    frame_rate = codec.config.sampling_rate / codec.config.hop_length
    waves, codes, ended = [], [], []
    start = 0
    while start < len(prompts):
        voice = prompts[start][1]
        stop = start + 1
        while stop < len(prompts) and stop - start < batch_size and prompts[stop][1] is voice:
            stop += 1
        texts = [prompt.text for prompt, _ in prompts[start:stop]]
        limit = check_request(model.config, [script_for(t, voice) for t in texts], settings, frame_rate, voice)
        batch = dataclasses.replace(settings, seed=settings.seed + start)
        for frames in synthesize_codes(model, texts, batch, frame_rate, voice):
            codes.append(frames.numpy())
            ended.append(len(frames) < limit)
            waves.append(decode(codec, frames))
        start = stop
    return waves, codes, ended


def labels(models: list[str]) -> list[str]:
    """Short unique folder names for the models: the last part of each path or hub id, numbered on a clash."""
    names = [re.sub(r"[^\w.-]+", "_", Path(m.rstrip("/")).name) or "model" for m in models]
    if len(set(names)) == len(names):
        return names
    parents = [re.sub(r"[^\w.-]+", "_", Path(m.rstrip("/")).parent.name) for m in models]
    joined = [f"{p}-{n}" if p else n for p, n in zip(parents, names, strict=True)]
    return joined if len(set(joined)) == len(joined) else [f"{i + 1}-{n}" for i, n in enumerate(names)]


_ROWS = (("utterances", "utterances", "{:d}"), ("wer", "WER", "{:.3f}"), ("cer", "CER", "{:.3f}"),
         ("similarity_prompt", "similarity to the voice prompt", "{:.3f}"),
         ("similarity_reference", "similarity to the reference", "{:.3f}"), ("ended", "ended with EOS", "{:.0%}"),
         ("length_ratio", "length / reference (median)", "{:.2f}"),
         ("with_problems", "with a problem", "{:.0%}"))  # fmt: skip


def summary_table(summaries: dict[str, dict], judges: Judges) -> str:
    """A markdown table: a row per figure, a column per model, then the problem counts and the judges."""
    names = list(summaries)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, title, fmt in _ROWS:
        if any(summaries[n].get(key) is not None for n in names):
            cells = [fmt.format(summaries[n][key]) if summaries[n].get(key) is not None else "" for n in names]
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for problem in sorted({p for s in summaries.values() for p in s.get("problems", {})}):
        counts = [str(summaries[n]["problems"].get(problem, 0)) for n in names]
        lines.append(f"| {problem} | " + " | ".join(counts) + " |")
    lines += [""] + [f"{role}: {name}" for role, name in judges.names().items()]
    return "\n".join(lines)
