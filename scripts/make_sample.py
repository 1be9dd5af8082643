#!/usr/bin/env python3
"""Build the small bundled speech sample set under ``data/sample``.

The set is a 32-turn, two-speaker English dialogue (planning a weekend
camping trip) synthesized locally with espeak-ng. It exists so that the
data pipeline and tests have real audio to work on without downloading
anything.

Output layout::

    data/sample/
        README.md
        metadata.csv          # header "file|text|speaker", pipe-separated
        audio/utt_000.flac    # 16-bit mono 22050 Hz FLAC
        ...

Requirements: the ``espeak-ng`` binary on PATH, plus ``numpy`` and
``soundfile``. The script is deterministic and re-runnable: it deletes the
previous ``utt_*.flac`` files and rewrites everything.

Usage::

    python scripts/make_sample.py [--out data/sample]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 22050
SPEED_WPM = 160
PROMPT = "prompts/utt_000_hello_there.flac"  # the first line's opening words, the demo's voice prompt

# Speaker tag -> espeak-ng voice arguments.
VOICES: dict[str, list[str]] = {
    "S1": ["-v", "en-us+m3"],  # American English, male variant m3, default pitch
    "S2": ["-v", "en-gb+f3", "-p", "70"],  # British English, female variant f3, higher pitch
}

# 32 short turns; speakers strictly alternate, starting with S1.
UTTERANCES: list[str] = [
    "Hello there, are you ready to plan the trip?",
    "Yes, I have the map right here.",
    "Great. Where should we camp this weekend?",
    "How about the lake near the old mill?",
    "Good idea. It is quiet there in autumn.",
    "We should leave early on Saturday morning.",
    "Seven o'clock works for me.",
    "I will bring the tent and the stove.",
    "Then I will pack the food and water.",
    "Do we need a permit for the campsite?",
    "Yes, it costs ten dollars a night.",
    "That is cheap. Let's book two nights.",
    "Should we invite your brother too?",
    "He is busy, but I will ask.",
    "What about the weather forecast?",
    "Sunny on Saturday, maybe rain on Sunday.",
    "Then we need the rain jackets.",
    "I will put them in the car tonight.",
    "Do you have enough sleeping bags?",
    "Only one. Can you borrow another?",
    "Sure, my neighbor has a spare.",
    "Let's cook pasta on the first night.",
    "And pancakes for breakfast, please.",
    "Fine, I will buy eggs and flour.",
    "Don't forget the matches this time.",
    "I packed them already, don't worry.",
    "How long is the drive?",
    "About two hours without traffic.",
    "Let's stop for coffee on the way.",
    "Deal. I know a good place.",
    "Perfect. I think we are ready.",
    "See you on Saturday, then.",
]


def speaker_for(index: int) -> str:
    return "S1" if index % 2 == 0 else "S2"


def synthesize(text: str, voice_args: list[str], wav_path: Path, speed: int = SPEED_WPM) -> np.ndarray:
    """Run espeak-ng for one utterance and return float32 mono samples."""
    cmd = ["espeak-ng", *voice_args, "-s", str(speed), "-w", str(wav_path), text]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    audio, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    assert sr == SAMPLE_RATE, f"espeak-ng produced {sr} Hz, expected {SAMPLE_RATE} Hz"
    audio = audio.mean(axis=1)  # to mono (espeak-ng is already mono)
    if audio.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {text!r}")
    return audio


def write_readme(out_dir: Path, n: int, total_s: float) -> None:
    s1 = " ".join(VOICES["S1"])
    s2 = " ".join(VOICES["S2"])
    text = f"""# Bundled speech sample

A tiny two-speaker English dialogue ({n} utterances, {total_s:.1f} s in total,
a couple planning a weekend camping trip) for smoke tests and examples. It is
not meant for training a useful model.

All audio was synthesized with [espeak-ng](https://github.com/espeak-ng/espeak-ng)
by `scripts/make_sample.py`; re-run that script to regenerate this folder.

- `S1`: `espeak-ng {s1} -s {SPEED_WPM}`
- `S2`: `espeak-ng {s2} -s {SPEED_WPM}`

Audio: `audio/utt_NNN.flac`, 16-bit PCM FLAC, mono, {SAMPLE_RATE} Hz. `{PROMPT}` is the first
utterance's opening words ("Hello there,", cut in its first pause): the demo's voice prompt, which the demo
model continues with the rest of that line.

## metadata.csv

UTF-8, pipe-separated (`|`), no quoting, with a header line:

```
file|text|speaker
audio/utt_000.flac|[S1] Hello there, are you ready to plan the trip?|S1
```

- `file`: path relative to this folder
- `text`: transcript, always prefixed with the Dia speaker tag `[S1]` or `[S2]`
- `speaker`: `S1` or `S2`

## License

The dialogue text and audio were generated for this project and are dedicated
to the public domain (CC0 1.0).
"""
    (out_dir / "README.md").write_text(text, encoding="utf-8")


def first_phrase(audio: np.ndarray, rate: int = SAMPLE_RATE, pause_s: float = 0.1) -> np.ndarray:
    """The audio up to the middle of its first pause (pause_s of digital silence after the first 0.3 s): the
    opening words as a voice prompt ("Hello there," of the first line)."""
    frame = int(0.02 * rate)
    quiet = np.abs(audio[: len(audio) // frame * frame]).reshape(-1, frame).max(1) < 1e-3
    run, need = 0, int(pause_s / 0.02)
    for i in range(int(0.3 / 0.02), len(quiet)):
        run = run + 1 if quiet[i] else 0
        if run == need:
            return audio[: (i - need // 2) * frame]
    raise ValueError("no pause in the first utterance")


def main(argv: list[str] | None = None) -> int:
    repo_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=repo_root / "data" / "sample")
    args = parser.parse_args(argv)

    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng not found on PATH", file=sys.stderr)
        return 1
    assert len(UTTERANCES) == 32
    for text in UTTERANCES:
        assert "|" not in text and "\n" not in text, text

    out_dir: Path = args.out
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for old in audio_dir.glob("utt_*.flac"):
        old.unlink()

    rows = ["file|text|speaker"]
    durations: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_wav = Path(tmp) / "utt.wav"
        for i, text in enumerate(UTTERANCES):
            spk = speaker_for(i)
            audio = synthesize(text, VOICES[spk], tmp_wav)
            rel = f"audio/utt_{i:03d}.flac"
            sf.write(out_dir / rel, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            durations.append(audio.size / SAMPLE_RATE)
            rows.append(f"{rel}|[{spk}] {text}|{spk}")
            if i == 0:
                (out_dir / "prompts").mkdir(exist_ok=True)
                opening = first_phrase(audio)
                sf.write(out_dir / PROMPT, opening, SAMPLE_RATE, format="FLAC", subtype="PCM_16")

    (out_dir / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_readme(out_dir, len(UTTERANCES), sum(durations))

    print(
        f"wrote {len(durations)} files to {out_dir}: "
        f"total {sum(durations):.2f} s, min {min(durations):.2f} s, max {max(durations):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
