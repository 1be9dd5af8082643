"""Measure `dia-tpu prepare` throughput with the real-size DAC architecture (random weights, no download).

    .venv/bin/python scripts/bench_prepare.py [--minutes 2] [--processes 1 2] [--json out.json]

Builds a corpus from the bundled sample (its clips repeated, so decode and resample work as on real
files), prepares it once per process count (2 processes run through `accelerate launch`, gloo on CPU),
and prints audio seconds per wall second and the time spent decoding, resampling and encoding, summed
over processes, from each run's manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
# transformers' DacConfig defaults are the real 76.6 M-parameter DAC apart from the rate.
REAL_DAC = ["model.codec=null", "model.codec_architecture={sampling_rate: 44100}"]


def make_corpus(folder: Path, minutes: float) -> float:
    """Copies of the sample's clips until `minutes` of audio; returns the seconds written."""
    rows = [line.split("|") for line in (SAMPLE / "metadata.csv").read_text().splitlines()[1:]]
    (folder / "audio").mkdir(parents=True)
    lines, seconds, copy = ["file|text"], 0.0, 0
    while seconds < minutes * 60:
        for file, text, *_ in rows:
            target = f"audio/{copy:03d}_{Path(file).name}"
            shutil.copy(SAMPLE / file, folder / target)
            lines.append(f"{target}|{text}")
            seconds += sf.info(str(SAMPLE / file)).duration
        copy += 1
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return seconds


def run(corpus: Path, output: Path, processes: int) -> dict:
    # Small shards, so that every process gets its share of a small corpus.
    prepare = ["prepare", "--config", str(ROOT / "configs/demo.yaml"), "--input", str(corpus), "--output",
               str(output), *REAL_DAC, "prepare.shard_size=8"]  # fmt: skip
    env = dict(os.environ)
    if processes == 1:
        cmd = [sys.executable, "-m", "dia_tpu", *prepare]
    else:
        env.update(ACCELERATE_USE_CPU="1", USE_TORCH_XLA="0", OMP_NUM_THREADS=str(max(1, os.cpu_count() // processes)))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dia_tpu", *prepare]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    manifest = json.loads((output / "manifest.json").read_text())
    return {"processes": processes, "audio_seconds": manifest["audio_seconds"], "wall_seconds": round(wall, 1),
            "audio_seconds_per_second": round(manifest["audio_seconds"] / wall, 3), **manifest["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="audio in the corpus")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        seconds = make_corpus(corpus, args.minutes)
        print(f"corpus: {seconds:.0f} s of audio in {len(list((corpus / 'audio').iterdir()))} files")
        results = [run(corpus, Path(tmp) / f"out_{n}", n) for n in args.processes]
    print("| processes | audio s | wall s | audio s / s | decode s | resample s | encode s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['processes']} | {r['audio_seconds']:.0f} | {r['wall_seconds']:.1f} | "
              f"{r['audio_seconds_per_second']:.3f} | {r.get('decode', 0):.2f} | {r.get('resample', 0):.2f} | "
              f"{r.get('encode', 0):.1f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
