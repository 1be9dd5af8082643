"""`dia-tpu report RUN_DIR`: one self-contained HTML page about a training run.

It reads what `train` leaves in output.dir: config.yaml, the TensorBoard scalars under logs/, the samples
under samples/step_N/, the judged audio under evaluations/step_N/ and the best/ and final/ folders. Every
image and sound is embedded as a data URI, so the page can be mailed or archived on its own and opens without
a network or scripts.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from html import escape
from pathlib import Path

import soundfile as sf
import yaml

from dia_tpu.artifacts import SAMPLES_INDEX, RunFolder
from dia_tpu.artifacts.names import inside
from dia_tpu.config import redact_tree, redact_url
from dia_tpu.errors import UserError

CSS = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}.missing{color:#a40}"
    ".table{overflow-x:auto}table{border-collapse:collapse;font-size:.85em}"
    "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}"
    # Spectrograms are 513 frequency rows tall whatever their length: stretch them into a strip.
    "figure{margin:1.5em 0}figure audio,figure img{display:block;margin:.3em 0}figure img{width:100%;height:8em}"
)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default RUN_DIR/report.html) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    run = RunFolder(run_dir)
    if not any(path.exists() for path in (run.config, run.logs, run.samples)):
        raise FileNotFoundError(f"{run_dir} holds none of config.yaml, logs/, samples/: not a run's output.dir")
    out = Path(out) if out is not None else run_dir / "report.html"
    page = render(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A reader (or a browser reloading the page) never sees a half-written file; the pid keeps two
    # concurrent reports of the same run from writing into one temp file.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def render(run_dir: Path) -> str:
    """The whole page as a string."""
    run = RunFolder(run_dir)
    scalars = read_scalars(run.logs)
    body = [
        f"<h1>Training run {escape(run_dir.name)}</h1>",
        _summary(run_dir, scalars),
        "<h2>Curves</h2>",
        _curves(scalars),
        "<h2>Evaluation per codebook</h2>",
        _eval_table(scalars),
        "<h2>Samples</h2>",
        _samples(run.samples),
        "<h2>Judged audio</h2>",
        _audio_table(scalars),
        _worst(run.evaluations),
    ]
    config = run.config
    if config.is_file():
        body.append(f"<h2>Config</h2>\n<pre>{escape(_config_text(config))}</pre>")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(run_dir.name)}: training report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _config_text(config: Path) -> str:
    """The run's config.yaml with the credentials in its URLs redacted: a run saved before saves redacted them
    still holds them, and the page is meant to be passed around (the studio shows it too)."""
    text = config.read_text(encoding="utf-8")
    try:
        return yaml.safe_dump(redact_tree(yaml.safe_load(text)), sort_keys=False)
    except (yaml.YAMLError, RecursionError):  # not YAML, or nested deeper than Python's stack: line by line
        return "\n".join(redact_url(line) for line in text.splitlines())


def read_scalars(logs: Path) -> dict[str, dict[int, float]]:
    """Every scalar under `logs` as {tag: {step: value}}; a later write of the same step (a resume) wins."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {}
    folders = sorted({path.parent for path in logs.rglob("events.out.tfevents.*")}) if logs.is_dir() else []
    for folder in folders:
        # Keep every scalar point; skip loading the sample audio and images the trackers also logged.
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 1, "audio": 1, "tensors": 1})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in sorted(acc.Scalars(tag), key=lambda e: e.wall_time):
                found.setdefault(tag, {})[event.step] = event.value
    return found


def _summary(run_dir: Path, scalars: dict[str, dict[int, float]]) -> str:
    items = []
    train_loss = scalars.get("train/loss", {})
    if train_loss:
        last = max(train_loss)
        items.append(f"{last} optimizer steps logged; final train loss {train_loss[last]:.4f}")
    elif RunFolder(run_dir).logs.is_dir():
        items.append('<span class="missing">no train/loss under logs/</span>')
    else:
        items.append('<span class="missing">no logs/ (train.report_to was none or wandb): no curves</span>')
    eval_loss = scalars.get("eval/loss", {})
    if eval_loss:
        best = min(eval_loss, key=eval_loss.get)
        items.append(f"best eval loss {eval_loss[best]:.4f} at step {best} ({len(eval_loss)} evaluations)")
    else:
        items.append('<span class="missing">no evaluation logged</span>')
    run = RunFolder(run_dir)
    kept = ", ".join(path.name for path in run.list_checkpoints()) or "none"
    items.append(f"checkpoints kept: {escape(kept)}")
    for folder, what in ((run.best, "best-eval checkpoint"), (run.final, "final export")):
        items.append(f"{what} {folder.name}/: {'present' if folder.is_dir() else 'absent'}")
    return "<ul>\n" + "\n".join(f"<li>{item}</li>" for item in items) + "\n</ul>"


def _curves(scalars: dict[str, dict[int, float]]) -> str:
    if "train/loss" not in scalars:
        return '<p class="missing">No curves: no training scalars were logged.</p>'
    loss = {"train loss": scalars["train/loss"]}
    if "eval/loss" in scalars:
        loss["eval loss"] = scalars["eval/loss"]
    parts = [_img(_plot(loss, "loss"), "loss curves")]
    if "train/lr" in scalars:
        parts.append(_img(_plot({"learning rate": scalars["train/lr"]}, "learning rate"), "learning-rate curve"))
    rates = {name: scalars[tag] for tag, name in (("audio/wer", "WER"), ("audio/cer", "CER")) if tag in scalars}
    if rates:
        parts.append(_img(_plot(rates, "error rate"), "WER and CER curves"))
    names = (("audio/similarity_prompt", "to the voice prompt"), ("audio/similarity_reference", "to the reference"))
    similar = {name: scalars[tag] for tag, name in names if tag in scalars}
    if similar:
        parts.append(_img(_plot(similar, "speaker similarity"), "speaker similarity curves"))
    return "\n".join(parts)


def _plot(series: dict[str, dict[int, float]], ylabel: str) -> bytes:
    """A line plot of each series against the optimizer step, as PNG bytes."""
    # A bare Figure renders with Agg and leaves pyplot's global state (and any GUI backend) alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot()
    for label, points in series.items():
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], marker="o" if len(steps) < 30 else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _eval_table(scalars: dict[str, dict[int, float]]) -> str:
    eval_loss = scalars.get("eval/loss", {})
    if not eval_loss:
        return '<p class="missing">No evaluation was logged (data.eval_size=0, or no logs/).</p>'
    codebooks = sorted(int(m[1]) for tag in scalars if (m := re.fullmatch(r"eval/loss_cb(\d+)", tag)))
    columns = {"eval/loss": "loss (weighted)"}
    columns.update({f"eval/{kind}_cb{c}": f"cb{c} {kind}" for c in codebooks for kind in ("loss", "acc")})
    lines = ['<div class="table"><table>', "<tr><th>step</th>" + "".join(f"<th>{h}</th>" for h in columns.values())]
    for step in sorted(eval_loss):
        cells = "".join(f"<td>{_number(scalars.get(tag, {}).get(step))}</td>" for tag in columns)
        lines.append(f"<tr><td>{step}</td>{cells}</tr>")
    return "\n".join([*lines, "</table></div>"])


_AUDIO_COLUMNS = {
    "audio/utterances": "utterances",
    "audio/wer": "WER",
    "audio/cer": "CER",
    "audio/deletion_rate": "words deleted / word",
    "audio/insertion_rate": "words inserted / word",
    "audio/similarity_prompt": "similarity to prompt",
    "audio/similarity_reference": "similarity to reference",
    "audio/mos": "predicted MOS",
    "audio/ended": "ended",
    "audio/with_problems": "with a problem",
}
# How many of the latest judged step's utterances are shown, the worst first.
WORST = 5


def _audio_table(scalars: dict[str, dict[int, float]]) -> str:
    steps = sorted(scalars.get("audio/utterances", {}))
    if not steps:
        return '<p class="missing">No audio was judged (eval.audio.every=0, or no logs/).</p>'
    columns = {tag: name for tag, name in _AUDIO_COLUMNS.items() if tag in scalars}
    lines = ['<div class="table"><table>', "<tr><th>step</th>" + "".join(f"<th>{h}</th>" for h in columns.values())]
    for step in steps:
        cells = "".join(f"<td>{_number(scalars[tag].get(step))}</td>" for tag in columns)
        lines.append(f"<tr><td>{step}</td>{cells}</tr>")
    return "\n".join([*lines, "</table></div>"])


def _worst(evaluations: Path) -> str:
    """The latest judged step's worst utterances (highest WER, then most problems), with players."""
    steps = sorted(evaluations.glob("step_*"), key=_step_of) if evaluations.is_dir() else []
    if not steps or not (steps[-1] / "rows.jsonl").is_file():
        return ""
    folder = steps[-1]
    try:
        rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
    except json.JSONDecodeError as err:
        raise UserError(f"{folder / 'rows.jsonl'}: not valid JSON: {err}") from err
    rows.sort(key=lambda r: (-r.get("wer", 0.0), -len(r["problems"]), r.get("similarity_reference", 1.0)))
    parts = [f"<h3>The worst of step {_step_of(folder)} ({min(WORST, len(rows))} of {len(rows)})</h3>"]
    for row in rows[:WORST]:
        try:
            wav = inside(folder, f"{row['id']}.wav", "an utterance's id")
        except ValueError as err:  # a rows.jsonl from elsewhere: its names stay inside its folder
            parts.append(f'<p class="missing">{escape(str(err))}: not shown</p>')
            continue
        figures = [f"{row['seconds']:.2f} s"] + [
            f"{key} {row[key]:.3f}" for key in ("wer", "similarity_prompt", "similarity_reference") if key in row
        ]
        caption = (
            f"<b>{escape(row['id'])}</b> ({', '.join(figures)}; problems: "
            f"{escape(', '.join(row['problems']) or 'none')}): {escape(row['text'])}"
        )
        if "transcript" in row:
            caption += f"<br>heard: {escape(row['transcript'] or '(nothing)')}"
        audio = (
            f'<audio controls preload="metadata" src="data:audio/wav;base64,{_wav_base64(wav)}"></audio>'
            if wav.is_file() and row["seconds"] > 0
            else '<p class="missing">no audio</p>'
        )
        parts.append(f"<figure>\n<figcaption>{caption}</figcaption>\n{audio}\n</figure>")
    return "\n".join(parts)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _samples(samples: Path) -> str:
    steps = sorted(samples.glob("step_*"), key=_step_of) if samples.is_dir() else []
    if not steps:
        return '<p class="missing">No samples were generated (samples.every=0, or no samples/).</p>'
    parts = []
    for folder in steps:
        parts.append(f"<h3>Step {_step_of(folder)}</h3>")
        index = folder / SAMPLES_INDEX
        if not index.is_file():
            # Written last, after every wav: its absence means generation was cut short.
            parts.append(f'<p class="missing">{escape(str(index))} is missing: samples incomplete.</p>')
            continue
        try:
            entries = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{index}: not valid JSON: {err}") from err
        parts += [_sample(folder, entry) for entry in entries]
    return "\n".join(parts)


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix("step_"))
    except ValueError as err:
        raise UserError(f"{folder}: expected a samples folder named step_N") from err


def _sample(folder: Path, entry: dict) -> str:
    name = entry["name"]
    try:
        wav, png = (inside(folder, f"{name}{suffix}", "a sample's name") for suffix in (".wav", ".png"))
    except ValueError as err:  # an index.json from elsewhere: its names stay inside its folder
        return f'<p class="missing">{escape(str(err))}: not shown</p>'
    for path in (wav, png):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {folder / SAMPLES_INDEX} but missing")
    caption = f"<b>{escape(name)}</b> ({entry['seconds']:.2f} s, seed {entry['seed']}): {escape(entry['text'])}"
    if entry.get("audio_prompt"):
        caption += f"<br>continuing {escape(entry['audio_prompt'])}: {escape(entry.get('transcript') or '')}"
    audio = f'<audio controls preload="metadata" src="data:audio/wav;base64,{_wav_base64(wav)}"></audio>'
    image = _img(png.read_bytes(), f"spectrogram of {name}")
    return f"<figure>\n<figcaption>{caption}</figcaption>\n{audio}\n{image}\n</figure>"


def _wav_base64(path: Path) -> str:
    """The wav re-encoded as 16-bit PCM, whatever it was written as, to keep the page small."""
    try:
        wave, rate = sf.read(path, dtype="float32")
    except sf.LibsndfileError as err:
        raise UserError(f"{path}: cannot read audio: {err}") from err
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
