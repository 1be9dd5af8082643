"""How far the offline aligners' word boundaries fall from the truth, on speech whose word times are known.

Each transcript of the bundled sample is spoken word by word by espeak-ng in the sample's two voices (not the
espeak aligner's reference voice) at a random rate, with random pauses between words, so every word's start and
end is known to the sample. Each aligner then aligns the joined audio to the transcript; the script prints, per
aligner, the share of recordings it aligned, the mean and 95th-percentile error of the word starts and ends in
ms, and its speed in audio seconds per second.

    python scripts/aligner_accuracy.py [--count 32] [--seed 0] [--aligners espeak,pocketsphinx]
                                       [--longest-pause 0.25] [--snr-db DB]

Speech made of separately spoken words is easier than connected speech (no coarticulation across words): read
the figures as an upper bound of the accuracy on real recordings.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dia_tpu.listen.align import QUIET, Unaligned, load_aligner, spoken_words  # noqa: E402

RATE = 24000
VOICES = (["-v", "en-us+m3"], ["-v", "en-gb+f3", "-p", "70"])  # the bundled sample's S1 and S2


def spoken(word: str, voice: list[str], speed: int) -> np.ndarray:
    done = subprocess.run(["espeak-ng", *voice, "-s", str(speed), "--stdout", word], capture_output=True, check=True)
    sound, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    import soxr

    sound = soxr.resample(sound, rate, RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(sound) > QUIET)
    return sound[loud[0] : loud[-1] + 1]


def recording(
    words: list[str], rng: random.Random, longest_pause: float, snr_db: float | None
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The words joined with pauses of up to `longest_pause` seconds (white noise added at `snr_db`), and each
    word's (start, end) in seconds."""
    voice, speed = rng.choice(VOICES), rng.randint(150, 190)
    pieces, truth = [np.zeros(int(rng.uniform(0.1, 0.4) * RATE), np.float32)], []
    at = len(pieces[0])
    for word in words:
        sound = spoken(word, voice, speed)
        truth.append((at / RATE, (at + len(sound)) / RATE))
        pause = np.zeros(int(rng.uniform(0.0, longest_pause) * RATE), np.float32)
        pieces += [sound, pause]
        at += len(sound) + len(pause)
    pieces.append(np.zeros(int(0.2 * RATE), np.float32))
    wave = np.concatenate(pieces)
    if snr_db is not None:
        speech = float(np.mean(np.concatenate([p for p in pieces if p.any()]) ** 2))
        noise = np.random.default_rng(rng.randrange(2**32)).normal(size=len(wave)).astype(np.float32)
        wave = wave + noise * np.sqrt(speech / 10 ** (snr_db / 10))
    return wave, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aligners", default="espeak,pocketsphinx")
    parser.add_argument("--longest-pause", type=float, default=0.25, help="seconds between words, at most")
    parser.add_argument("--snr-db", type=float, default=None, help="add white noise at this signal-to-noise ratio")
    args = parser.parse_args()
    rows = list(csv.DictReader((ROOT / "data/sample/metadata.csv").open(), delimiter="|"))[: args.count]
    rng = random.Random(args.seed)
    made = []
    for row in rows:
        words = spoken_words(row["text"])
        made.append((words, *recording(words, rng, args.longest_pause, args.snr_db)))
    audio_seconds = sum(len(wave) / RATE for _, wave, _ in made)
    print(f"{len(made)} recordings, {sum(len(w) for w, _, _ in made)} words, {audio_seconds:.1f} s of audio\n")
    print("| aligner | aligned | start error mean / p95 (ms) | end error mean / p95 (ms) | audio s per s |")
    print("|---|---|---|---|---|")
    for spec in args.aligners.split(","):
        aligner = load_aligner(spec)
        starts, ends, aligned, reasons = [], [], 0, []
        took = time.perf_counter()
        for words, wave, truth in made:
            try:
                timed = aligner.align(wave, RATE, words)
            except Unaligned as err:
                reasons.append(str(err))
                continue
            aligned += 1
            starts += [abs(t.start - s) * 1000 for t, (s, _) in zip(timed, truth, strict=True)]
            ends += [abs(t.end - e) * 1000 for t, (_, e) in zip(timed, truth, strict=True)]
        took = time.perf_counter() - took

        def figures(errors: list[float]) -> str:
            return f"{np.mean(errors):.0f} / {np.percentile(errors, 95):.0f}" if errors else "-"

        print(
            f"| {aligner.name} | {aligned} of {len(made)} | {figures(starts)} | {figures(ends)} | "
            f"{audio_seconds / took:.1f} |"
        )
        if reasons:
            print(f"|  | not aligned: {'; '.join(sorted(set(reasons))[:4])} | | | |")


if __name__ == "__main__":
    main()
