"""`dia-tpu report`: a real tiny run turned into one HTML page, checked by parsing it and by opening it in
headless Chromium, where every image and sound has to load from the page alone."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import soundfile as sf
from conftest import tiny
from helpers.browser import Browser

from dia_tpu.report import write_report
from dia_tpu.training.recipe import train

HELLO = "[S1] Hello <there> & you."
PROMPTS = f'samples.prompts=[{{name: hello, text: "{HELLO}"}}, {{name: plan, text: "[S1] Ready?", seed: 3}}]'
STEPS = [5, 10]
CODEBOOKS = 9  # the demo model's channels


@pytest.fixture(scope="module")
def run(codes_dir, tmp_path_factory) -> Path:
    """A 10-step run evaluated, sampled and its audio judged at steps 5 and 10, with its report beside it."""
    run_dir = tmp_path_factory.mktemp("report") / "tiny"
    train(
        tiny(
            codes_dir,
            run_dir,
            "train.max_steps=10",
            "eval.eval_every=5",
            "train.save_every=5",
            "samples.every=5",
            "samples.max_seconds=0.5",
            PROMPTS,
            "eval.audio.every=5",
            "eval.audio.limit=2",
            "eval.audio.max_seconds=0.5",
        )
    )
    assert write_report(run_dir) == run_dir / "report.html"
    return run_dir


def samples_of(run_dir: Path) -> list[dict]:
    """index.json entries of every samples step, in the order the page shows them."""
    folders = sorted((run_dir / "samples").iterdir())
    return [entry for folder in folders for entry in json.loads((folder / "index.json").read_text())]


class Page(HTMLParser):
    """The start tags, the table rows (as cell texts) and all the text of a page."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self.in_cell = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self.in_cell:
            self.rows[-1][-1] += data

    def find(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


def test_report_holds_curves_eval_table_and_samples(run, tmp_path):
    html = (run / "report.html").read_text(encoding="utf-8")
    page = Page(html)
    assert html.startswith("<!DOCTYPE html>") and page.find("meta") == [{"charset": "utf-8"}]
    text = "".join(page.text)
    assert "Training run tiny" in text and "10 optimizer steps logged" in text and "best eval loss" in text
    assert "checkpoints kept: step_5, step_10" in text and "best-eval checkpoint best/: present" in text

    # Everything is embedded: no address points outside the page.
    assert "http://" not in html and "https://" not in html
    for name, attrs in page.tags:
        for key in ("src", "href"):
            assert key not in attrs or attrs[key].startswith("data:"), (name, attrs[key][:80])

    images = [img["alt"] for img in page.find("img")]
    assert images[:4] == ["loss curves", "learning-rate curve", "WER and CER curves", "speaker similarity curves"]
    assert images[4:] == [f"spectrogram of {s['name']}" for s in samples_of(run)]

    header, *rows = page.rows[: 1 + len(STEPS)]
    assert header[:2] == ["step", "loss (weighted)"]
    assert header[2:] == [f"cb{c} {kind}" for c in range(CODEBOOKS) for kind in ("loss", "acc")]
    assert [int(row[0]) for row in rows] == STEPS
    assert all(len(row) == len(header) and all(row) for row in rows)
    # The judged audio: a row per judged step, then the latest step's worst utterances.
    header, *rows = page.rows[1 + len(STEPS) :]
    assert header[:4] == ["step", "utterances", "WER", "CER"] and "similarity to reference" in header
    assert [int(row[0]) for row in rows] == STEPS and all(row[1] == "2.000" for row in rows)
    assert "The worst of step 10 (2 of 2)" in text and "heard: " in text

    # One player per sample per step, each a wav at the codec's rate, as long as the sample.
    samples = samples_of(run)
    assert [(s["step"], s["name"]) for s in samples] == [(step, n) for step in STEPS for n in ("hello", "plan")]
    audios = page.find("audio")
    judged = [json.loads(line) for line in (run / "evaluations/step_000010/rows.jsonl").read_text().splitlines()]
    assert len(audios) == len(samples) + sum(row["seconds"] > 0 for row in judged)
    for audio, sample in zip(audios, samples, strict=False):
        head, _, payload = audio["src"].partition(",")
        assert head == "data:audio/wav;base64"
        wave, rate = sf.read(io.BytesIO(base64.b64decode(payload)))
        assert rate == 44100 and sf.info(io.BytesIO(base64.b64decode(payload))).subtype == "PCM_16"
        assert len(wave) / rate == pytest.approx(sample["seconds"], abs=1e-3)

    # The prompt text is shown as text, not markup.
    assert "Hello &lt;there&gt; &amp; you." in html and "<there>" not in html
    assert HELLO in text

    # The command line writes the same page.
    out = tmp_path / "elsewhere" / "page.html"
    done = subprocess.run(
        [sys.executable, "-m", "dia_tpu", "report", str(run), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(out) in done.stdout
    assert out.read_text(encoding="utf-8") == html
    assert sorted(p.name for p in out.parent.iterdir()) == ["page.html"]


# What the page reports after loading: every image decoded, every audio's metadata read (or its error).
PROBE = """(async () => {
  const images = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0}));
  const metadata = a => new Promise(resolve => {
    const done = () => resolve({duration: a.duration, error: a.error ? a.error.code : null});
    if (a.readyState >= 1 || a.error) return done();
    a.addEventListener('loadedmetadata', done, {once: true});
    a.addEventListener('error', done, {once: true});
    setTimeout(() => resolve({duration: null, error: 'no metadata in 20 s'}), 20000);
  });
  const audios = await Promise.all([...document.querySelectorAll('audio')].map(metadata));
  return {images, audios};
})()"""


def test_report_loads_in_headless_chromium(run, tmp_path):
    with Browser(tmp_path / "profile") as browser:
        browser.open((run / "report.html").as_uri(), timeout=30)
        found = browser.evaluate(PROBE)
        events = browser.events

    assert len(found["images"]) == 4 + len(samples_of(run))
    assert all(image["ok"] for image in found["images"]), found["images"]
    expected = [s["seconds"] for s in samples_of(run)]
    assert all(a["error"] is None for a in found["audios"]) and len(found["audios"]) >= len(expected)
    assert [a["duration"] for a in found["audios"][: len(expected)]] == pytest.approx(expected, abs=0.05)
    failures = [e for e in events if e["method"] in ("Runtime.exceptionThrown", "Network.loadingFailed")]
    failures += [e for e in events if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    assert failures == []


def test_report_of_a_run_without_eval_or_samples(codes_dir, tmp_path):
    run_dir = tmp_path / "bare"
    train(
        tiny(
            codes_dir,
            run_dir,
            "train.max_steps=3",
            "train.save_every=100",
            "data.eval_size=0",
            "train.report_to=none",
            "samples.every=0",
        )
    )
    assert not (run_dir / "logs").exists()
    out = write_report(run_dir, tmp_path / "bare.html")
    page = Page(out.read_text(encoding="utf-8"))
    text = "".join(page.text)
    assert "no evaluation logged" in text and "No evaluation was logged" in text
    assert "No samples were generated" in text and "no logs/" in text
    assert "best-eval checkpoint best/: absent" in text and "final export final/: present" in text
    assert page.find("audio") == [] and page.find("img") == [] and page.rows == []


def test_report_names_a_missing_or_foreign_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report.html").exists()


def test_a_runs_names_never_reach_outside_it(run, tmp_path):
    """A run folder from elsewhere: the names in its index.json and rows.jsonl, and its links, stay inside it."""
    import shutil

    copy = tmp_path / "copy" / "run"
    shutil.copytree(run, copy, symlinks=True)
    secret = tmp_path / "secretdir"
    secret.mkdir()
    sf.write(secret / "voicemail.wav", [0.5, -0.5] * 2000, 8000)
    (secret / "voicemail.png").write_bytes(b"\x89PNG secret picture")
    step = sorted((copy / "samples").iterdir())[-1]
    entries = json.loads((step / "index.json").read_text())
    entries.append({**entries[0], "name": "../../../../secretdir/voicemail"})
    (step / "index.json").write_text(json.dumps(entries))
    first = entries[0]["name"]
    (step / f"{first}.png").unlink()
    (step / f"{first}.png").symlink_to(secret / "voicemail.png")
    judged = sorted((copy / "evaluations").iterdir())[-1]
    rows = [json.loads(line) for line in (judged / "rows.jsonl").read_text().splitlines()]
    rows[0]["id"], rows[0]["wer"] = "../../../../secretdir/voicemail", 9.0  # the worst: shown first
    (judged / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    page = write_report(copy).read_text(encoding="utf-8")
    # `dia-tpu check` names the same three, and nothing in the run as training wrote it.
    from dia_tpu.artifacts.audit import audit

    assert audit(run).refused == [] and audit(run).notes == []
    found = audit(copy)
    assert [line.split(": ")[0] for line in found.refused] == [
        f"{judged.relative_to(copy)}/rows.jsonl",
        f"{step.relative_to(copy)}/index.json",
    ]
    assert found.notes == [
        f"{step.relative_to(copy)}/{first}.png is a link to {secret / 'voicemail.png'}, outside "
        "the folder: what it points at is read as if it were in the folder"
    ]
    leaked = [base64.b64encode((secret / "voicemail.png").read_bytes()).decode()[:16]]
    buf = io.BytesIO()
    sf.write(buf, *sf.read(secret / "voicemail.wav"), format="WAV", subtype="PCM_16")
    leaked.append(base64.b64encode(buf.getvalue()).decode()[:40])
    assert not any(piece in page for piece in leaked)
    assert page.count("leads out of") == 2 and f"a sample&#x27;s name &#x27;{first}.png&#x27; is a link out of" in page
    # The same secrets, named inside the run, do reach the page: the check above can fail.
    shutil.copy(secret / "voicemail.png", step / f"{first}.png.tmp")
    (step / f"{first}.png").unlink()
    (step / f"{first}.png.tmp").rename(step / f"{first}.png")
    assert leaked[0] in write_report(copy).read_text(encoding="utf-8")
