"""A synthetic two-voice "podcast" with a known script, to try `dia-tpu transcribe` on and to measure it.

    python scripts/make_podcast.py --out runs/podcast --episodes 2 --turns 16

Each episode is a conversation between a host and a guest (two espeak-ng voices), turns of one to three
sentences from speech_corpus's grammar, joined by pauses, over a faint noise floor. Episode 1 has one
stretch where the guest starts before the host has finished (overlapping speech) and a burst of noise in
a pause. Episodes alternate 44.1 kHz mono WAV and 22.05 kHz stereo FLAC, as recordings arrive in any
format. `truth.json` lists every turn: episode, speaker, start, end (seconds), text, whether it overlaps,
and its sentences with their own start and end.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from speech_corpus import RATE, Voice, bundled_sentences, distinct_sentences, speak

SENTENCE_GAP = 0.25  # seconds between the sentences of one turn
VOICES = {"host": Voice("en-us", "m3", 40, 165), "guest": Voice("en-gb", "f3", 70, 150)}


def episode(rng: random.Random, turns: int, overlap: bool) -> tuple[np.ndarray, list[dict]]:
    texts = distinct_sentences(rng, turns * 3, bundled_sentences())
    pieces: list[tuple[float, np.ndarray]] = []
    rows: list[dict] = []
    at, pause, speaker = 0.6, 0.0, "host"
    overlap_turn, noise_turn = (turns // 2, turns // 3) if overlap else (-1, -1)
    for turn in range(turns):
        if turn == overlap_turn and rows[-1]["speaker"] == speaker:
            speaker = "guest" if speaker == "host" else "host"
        said = [texts.pop() for _ in range(rng.randint(1, 3))]
        start = at
        if turn == overlap_turn:
            # Starts 1.0 s before the previous turn ends: both voices at once.
            start = at - pause - 1.0
            rows[-1]["overlap"] = True
        sentences, end = [], start
        for text in said:  # sentence by sentence, 0.25 s apart, so that the script knows where each is
            wave = speak(text, VOICES[speaker])
            wave = (0.5 / np.abs(wave).max() * wave).astype(np.float32)
            pieces.append((end, wave))
            sentences.append({"start": round(end, 3), "end": round(end + len(wave) / RATE, 3), "text": text})
            end += len(wave) / RATE + SENTENCE_GAP
        end -= SENTENCE_GAP
        rows.append(
            {
                "speaker": speaker,
                "start": round(start, 3),
                "end": round(end, 3),
                "text": " ".join(said),
                "overlap": turn == overlap_turn,
                "sentences": sentences,
            }
        )
        pause = rng.uniform(0.5, 1.0) if turn != noise_turn else 2.5
        at = end + pause
        if turn == noise_turn:  # a knock in the pause: 0.4 s of noise
            pieces.append((at - 1.8, np.random.default_rng(turn).normal(0, 0.03, int(0.4 * RATE)).astype(np.float32)))
        # Mostly alternating; now and then the same speaker goes on after a pause.
        if rng.random() < 0.8:
            speaker = "guest" if speaker == "host" else "host"
    signal = np.random.default_rng(len(rows)).normal(0, 0.001, int((at + 0.5) * RATE)).astype(np.float32)
    for start, wave in pieces:
        offset = int(start * RATE)
        signal[offset : offset + len(wave)] += wave
    return signal, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--turns", type=int, default=16, help="turns per episode")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(f"podcast-{args.seed}")
    args.out.mkdir(parents=True, exist_ok=True)
    truth = []
    for number in range(1, args.episodes + 1):
        signal, rows = episode(rng, args.turns, overlap=number == 1)
        if number % 2:
            name = f"episode_{number}.wav"
            sf.write(args.out / name, signal, RATE)
        else:
            name = f"episode_{number}.flac"
            half = soxr.resample(signal, RATE, RATE // 2)
            sf.write(args.out / name, np.stack([half, 0.8 * half], axis=1), RATE // 2)
        truth += [{"episode": name, **row} for row in rows]
        print(f"{name}: {len(signal) / RATE:.1f} s, {len(rows)} turns")
    (args.out / "truth.json").write_text(json.dumps(truth, indent=1))


if __name__ == "__main__":
    main()
