"""Measure `dia-tpu prepare` throughput with the real-size DAC architecture (random weights, no download), and
with --dia2 Dia2's: the real-size Mimi architecture (random weights) and the espeak aligner, on the same corpus.

    .venv/bin/python scripts/bench_prepare.py [--minutes 2] [--join 1] [--processes 1 2]
        [--variant NAME:KEY=VALUE,...] [--dia2] [--json out.json]

Builds a corpus from the bundled sample (its clips repeated, so decode and resample work as on real files;
each copy a few samples shorter than the last, so that no two clips share a length, as in a real corpus;
with --join N every file holds N consecutive clips, about N x 2.3 s),
prepares it once per variant and process count (2 processes run through `accelerate launch`, gloo on CPU),
and prints audio seconds per wall second and the time spent decoding, resampling and encoding, summed over
processes, from each run's manifest (for Dia2, aligning too). Each Dia variant's codes are compared with the
first variant's: the share of code values that agree, per codebook's worst.

The default variants: the codec eager (`prepare.compile=false`), with its Snake activations compiled (the
default), and that in bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import os
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


def make_corpus(folder: Path, minutes: float, join: int = 1) -> float:
    """Copies of the sample's clips, `join` consecutive clips to a file, until `minutes` of audio; copy k is
    cut k * 37 samples short (every length differs). Returns the seconds written."""
    import numpy as np

    rows = [line.split("|") for line in (SAMPLE / "metadata.csv").read_text().splitlines()[1:]]
    groups = [rows[i : i + join] for i in range(0, len(rows) - join + 1, join)]
    (folder / "audio").mkdir(parents=True)
    lines, seconds, copy = ["file|text"], 0.0, 0
    while seconds < minutes * 60:
        for group in groups:
            target = f"audio/{copy:03d}_{Path(group[0][0]).name}"
            read = [sf.read(SAMPLE / file, dtype="float32") for file, *_ in group]
            wave, rate = np.concatenate([w for w, _ in read]), read[0][1]
            wave = wave[: len(wave) - 37 * copy]
            sf.write(folder / target, wave, rate)
            lines.append(f"{target}|{' '.join(text for _, text, *_ in group)}")
            seconds += len(wave) / rate
        copy += 1
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return seconds


def dia2_model(folder: Path) -> Path:
    """A Dia2 folder whose codec is the real-size Mimi architecture (transformers' `MimiConfig` defaults, Kyutai's
    Mimi; random weights) and whose model reads 32 codebooks of 2048, as the released Dia2 models do."""
    import shutil

    import torch
    from transformers import MimiConfig, MimiModel

    from dia_tpu.families.dia2.tiny import transcript_words, write_demo_model

    write_demo_model(folder, transcript_words(SAMPLE), codebooks=32, codebook_size=2048)
    shutil.rmtree(folder / "mimi")
    torch.manual_seed(0)
    MimiModel(MimiConfig()).save_pretrained(folder / "mimi")
    return folder


def run(corpus: Path, output: Path, processes: int, overrides: list[str], dia2: Path | None = None) -> dict:
    # Small shards, so that every process gets its share of a small corpus.
    config = ["configs/dia2-1b.yaml", f"model.pretrained={dia2}"] if dia2 else ["configs/demo.yaml", *REAL_DAC]
    prepare = [
        "prepare",
        "--config",
        str(ROOT / config[0]),
        "--input",
        str(corpus),
        "--output",
        str(output),
        *config[1:],
        "prepare.shard_size=8",
        *overrides,
    ]
    env = dict(os.environ)
    if processes == 1:
        cmd = [sys.executable, "-m", "dia_tpu", *prepare]
    else:
        env.update(ACCELERATE_USE_CPU="1", USE_TORCH_XLA="0", OMP_NUM_THREADS=str(max(1, os.cpu_count() // processes)))
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "dia_tpu",
            *prepare,
        ]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    manifest = json.loads((output / "manifest.json").read_text())
    return {
        "processes": processes,
        "audio_seconds": manifest["audio_seconds"],
        "wall_seconds": round(wall, 1),
        "audio_seconds_per_second": round(manifest["audio_seconds"] / wall, 3),
        **manifest["seconds"],
    }


def agreement(output: Path, reference: Path) -> float:
    """The lowest, over codebooks, share of code values equal to the reference run's (items matched by text)."""
    import numpy as np
    from datasets import load_from_disk

    def codes(folder: Path) -> dict:
        return {row["text"]: np.asarray(row["codes"]) for row in load_from_disk(str(folder))}

    ours, theirs = codes(output), codes(reference)
    same = sum((ours[t] == theirs[t]).sum(0) for t in theirs)
    total = sum(len(theirs[t]) for t in theirs)
    return float((same / total).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="audio in the corpus")
    parser.add_argument("--join", type=int, default=1, help="sample clips per corpus file (1: about 2.3 s each)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME:KEY=VALUE,...",
        help="repeatable; default: eager:prepare.compile=false, compiled:, compiled-bf16:prepare.mixed_precision=bf16",
    )
    parser.add_argument("--dia2", action="store_true", help="also prepare the corpus for Dia2 (Mimi, aligned)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    variants = args.variant or [
        "eager:prepare.compile=false",
        "compiled:",
        "compiled-bf16:prepare.mixed_precision=bf16",
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        seconds = make_corpus(corpus, args.minutes, args.join)
        print(f"corpus: {seconds:.0f} s of audio in {len(list((corpus / 'audio').iterdir()))} files, no two as long")
        reference = None
        for spec in variants:
            name, _, extra = spec.partition(":")
            for n in args.processes:
                output = Path(tmp) / f"out_{name}_{n}"
                result = {"variant": name, **run(corpus, output, n, [x for x in extra.split(",") if x])}
                reference = reference or output
                result["codes_agreement"] = agreement(output, reference)
                results.append(result)
        model = dia2_model(Path(tmp) / "dia2") if args.dia2 else None
        for n in args.processes if args.dia2 else ():
            results.append({"variant": "dia2", **run(corpus, Path(tmp) / f"out_dia2_{n}", n, [], model)})
    columns = "audio s | wall s | audio s / s | decode s | resample s | align s | encode s | codes agree"
    print(f"| variant | processes | {columns} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        agree = f"{100 * r['codes_agreement']:.1f} %" if "codes_agreement" in r else "-"
        print(
            f"| {r['variant']} | {r['processes']} | {r['audio_seconds']:.0f} | {r['wall_seconds']:.1f} | "
            f"{r['audio_seconds_per_second']:.3f} | {r.get('decode', 0):.2f} | {r.get('resample', 0):.2f} | "
            f"{r.get('annotate', 0):.1f} | {r.get('encode', 0):.1f} | {agree} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
