"""`dia-tpu evaluate`: the same prompts, generated with the same seeds and sampling settings by one or more
models, judged side by side.

    dia-tpu evaluate --model runs/x/best --model runs/x/final --prompts prompts.txt --out results/

Dia and Dia2 models may stand side by side: each speaks as its family does (`dia_tpu.evaluation.speech`), judged
alike. The prompts (`dia_tpu.evaluation.prompts`) are a prompts file, or with `--dataset DIR` a prepared dataset
encoded with the models' codec: its held-out items as the first model's run held them out (`data.eval_size`,
`data.seed`; all items for a model without a run config).

It writes `OUT/rows.jsonl` (a row per model and utterance), `OUT/summary.json`, `OUT/summary.md` (a column
per model, also printed) and every utterance as `OUT/<model>/<id>.wav`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import soundfile as sf
import torch

from dia_tpu.artifacts import open_artifact
from dia_tpu.artifacts.names import file_name
from dia_tpu.artifacts.owner import EVALUATION, claim
from dia_tpu.config import described
from dia_tpu.errors import UserError
from dia_tpu.evaluation.dia2_speech import Dia2Settings, Dia2Speech
from dia_tpu.evaluation.judge import Judges, judge, summarise
from dia_tpu.evaluation.prompts import Request, generate, load_request, run_pace, with_pace
from dia_tpu.evaluation.speech import speak_each
from dia_tpu.families import is_dia2_source
from dia_tpu.families.dia2.files import read_model
from dia_tpu.families.dia2.source import source_folder
from dia_tpu.generation.defaults import dia2_sampling
from dia_tpu.generation.speak import check_flags
from dia_tpu.generation.synthesize import GenerationSettings, sampling_of, with_model_sampling
from dia_tpu.model.load import language_tags_of, load_for_inference


def evaluate_models(
    models: list[str],
    requests: list[Request],
    out: str | Path,
    settings: GenerationSettings,
    judges: Judges,
    batch_size: int = 4,
    device: str | None = None,
    dia2=None,
) -> dict[str, dict]:
    """Generate and judge `requests` with each model; write the files; returns {model label: summary}. Sampling
    `settings` leaves out (None) is each model's own (`with_model_sampling`). A Dia2 model samples with the
    flags in `dia2` (a dict; None: not given), then its folder's generation_config.json, then upstream's, one
    prompt at a time. Each row and summary records the sampling its model used."""
    check_flags(settings, batch_size)
    out, device = Path(out), device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Rows, summaries and wavs are written over: only into a new or empty folder, or an earlier evaluation.
    claim(out, EVALUATION, "--out", earlier=_earlier_evaluation)
    summaries, rows = {}, []
    for label, source in zip(labels(models), models, strict=True):
        if is_dia2_source(source):
            prompts, waves, codes, ended, rate, used = _speak_dia2(source, requests, settings, dia2 or {}, device)
        else:
            artifact = open_artifact(source)
            model, codec = load_for_inference(artifact, device)
            rate = codec.config.sampling_rate
            paced = with_pace(requests, run_pace(artifact))
            voiced = [load_request(r, codec, model.config) for r in paced]
            prompts = [p for p, _ in voiced]
            model_settings = dataclasses.replace(settings, language_tags=language_tags_of(artifact))
            model_settings = with_model_sampling(model_settings, model)
            used = sampling_of(model_settings)
            waves, codes, ended = generate(model, codec, voiced, model_settings, batch_size)
        found = judge(prompts, waves, codes, ended, rate, judges)
        (out / label).mkdir(exist_ok=True)
        for row, wave in zip(found, waves, strict=True):
            sf.write(out / label / f"{row.id}.wav", wave, rate)
            rows.append({"model": label, "source": source, **row.to_dict(), "sampling": used})
        summaries[label] = summarise(found) | {"sampling": used}
        print(f"evaluated {source}: {len(found)} utterances")
    with open(out / "rows.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    (out / "summary.json").write_text(json.dumps({"judges": judges.names(), "models": summaries}, indent=2) + "\n")
    table = summary_table(summaries, judges)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out / 'rows.jsonl'}, {out / 'summary.json'}, {out / 'summary.md'}")
    return summaries


def _speak_dia2(source: str, requests: list[Request], settings: GenerationSettings, given: dict, device: str):
    """A Dia2 model's prompts, waves, codes, whether each said all its words, the audio rate and the sampling
    used: prompt i with seed `sampling.seed` + i, cut at `settings.max_seconds` (or where a held-out clip's
    prefix leaves less room)."""
    folder = source_folder(source)
    sampling = dia2_sampling(folder, given)
    model = read_model(folder).to(device).eval()
    speech = Dia2Speech(folder, model.config, device)
    loaded = [speech.load(r) for r in requests]
    spoken_settings = Dia2Settings(sampling, settings.max_seconds)
    for prompt, voice in loaded:
        try:
            speech.check(prompt, voice, Dia2Settings(sampling, None))
        except ValueError as err:
            raise UserError(f"prompt {prompt.id}: {err}") from err
    seeds = [sampling.seed + index for index in range(len(loaded))]
    waves, codes, ended = speak_each(speech, model, loaded, spoken_settings, seeds)
    return [prompt for prompt, _ in loaded], waves, codes, ended, speech.rate, dataclasses.asdict(sampling)


def _earlier_evaluation(folder: Path) -> bool:
    """An evaluation written before evaluations were marked: its rows and summaries beside its model folders."""
    names = {p.name for p in folder.iterdir()}
    return {"rows.jsonl", "summary.json", "summary.md"} <= names and all(
        (folder / name).is_dir() for name in names - {"rows.jsonl", "summary.json", "summary.md"}
    )


def labels(models: list[str]) -> list[str]:
    """Short unique folder names for the models: the last part of each path or hub id, numbered on a clash."""
    names = [file_name(Path(m.rstrip("/")).name or "model") for m in models]
    if len(set(names)) == len(names):
        return names
    parents = [file_name(parent) if (parent := Path(m.rstrip("/")).parent.name) else "" for m in models]
    joined = [f"{p}-{n}" if p else n for p, n in zip(parents, names, strict=True)]
    return joined if len(set(joined)) == len(joined) else [f"{i + 1}-{n}" for i, n in enumerate(names)]


_ROWS = (
    ("utterances", "utterances", "{:d}"),
    ("wer", "WER", "{:.3f}"),
    ("cer", "CER", "{:.3f}"),
    ("substitution_rate", "words substituted / word", "{:.3f}"),
    ("deletion_rate", "words deleted / word", "{:.3f}"),
    ("insertion_rate", "words inserted / word", "{:.3f}"),
    ("similarity_prompt", "similarity to the voice prompt", "{:.3f}"),
    ("similarity_reference", "similarity to the reference", "{:.3f}"),
    ("mos", "predicted MOS", "{:.2f}"),
    ("ended", "ended with EOS", "{:.0%}"),
    ("length_ratio", "length / reference (median)", "{:.2f}"),
    ("with_problems", "with a problem", "{:.0%}"),
)


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
    for name in names:
        if used := summaries[name].get("sampling"):
            lines.append(f"sampling of {name}: {described(used)}")
    return "\n".join(lines)
