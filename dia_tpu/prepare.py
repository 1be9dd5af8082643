"""Raw audio + transcripts -> a dataset of undelayed int16 codec codes on disk, with a report of what was skipped.

The source folder holds `metadata.csv` (UTF-8, `file|text[|speaker]`, no quoting, paths relative to the
folder, optional header line starting with `file`) and the audio it names. The output is a `datasets`
folder with columns text, codes [frames, channels], frames, source_id, speaker, plus `prepare.json` (codec
identity, rates, counts) and `skipped.tsv` (every row left out, and why). Training reads only this output.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Array2D, Dataset, Features, Value
from tqdm import tqdm
from transformers import DacModel

from dia_tpu.audio import AudioError, encode, load_audio
from dia_tpu.config import Config
from dia_tpu.model import build_codec, codec_identity, codec_on_accelerator

METADATA_FILE = "metadata.csv"
INFO_FILE = "prepare.json"
SKIPPED_FILE = "skipped.tsv"
# Audio held back waiting for equal-length partners before it is encoded in smaller batches: only equal
# lengths can share a batch, and waiting for all of them would hold the whole corpus in memory.
PENDING_SECONDS = 600.0


@dataclass
class Row:
    line: int  # line number in metadata.csv, for the report
    file: str  # the path as written in the csv; kept as the item's source_id
    text: str
    speaker: str


@dataclass
class Batcher:
    """Encodes clips in batches of equal sample count; `codes[i]` is filled once clip i has been encoded."""

    codec: DacModel
    batch_size: int
    max_pending_samples: int
    codes: dict[int, np.ndarray] = field(default_factory=dict)
    pending: dict[int, list[tuple[int, np.ndarray]]] = field(default_factory=dict)  # length -> [(i, wave)]
    pending_samples: int = 0

    def add(self, index: int, wave: np.ndarray) -> None:
        group = self.pending.setdefault(len(wave), [])
        group.append((index, wave))
        self.pending_samples += len(wave)
        if len(group) == self.batch_size:
            self._encode(len(wave))
        elif self.pending_samples > self.max_pending_samples:
            self.flush()

    def flush(self) -> None:
        for length in list(self.pending):
            self._encode(length)

    def _encode(self, length: int) -> None:
        group = self.pending.pop(length)
        self.pending_samples -= length * len(group)
        for (index, _), codes in zip(group, encode(self.codec, [wave for _, wave in group]), strict=True):
            self.codes[index] = codes


def prepare(cfg: Config, source: str | Path, output: str | Path) -> dict:
    """Encode every usable row of `source/metadata.csv` and write the dataset to `output`; returns prepare.json.

    The dataset is built beside `output` and swapped in only when complete, so a failed run never leaves
    half a dataset and never removes an earlier good one.
    """
    source, output = Path(source), Path(output)
    metadata = source / METADATA_FILE
    if not source.is_dir():
        raise FileNotFoundError(f"source folder not found: {source}")
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} not found: a source folder needs a metadata.csv of file|text[|speaker]")
    # Replacing `output` deletes it; refuse anything that is not an earlier prepared dataset (a mistyped
    # path could name the source folder itself).
    if output.exists() and not (output / INFO_FILE).is_file() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} exists and is not a prepared dataset; choose another output folder")
    rows, skipped = read_metadata(metadata)

    codec = codec_on_accelerator(build_codec(cfg.model))
    rate, hop = codec.config.sampling_rate, codec.config.hop_length
    batcher = Batcher(codec, cfg.prepare.batch_size, int(PENDING_SECONDS * rate))
    kept: list[Row] = []
    first_line: dict[Path, int] = {}  # resolved audio path -> line of the row that kept it
    samples = 0
    for row in tqdm(rows, desc="prepare", unit="clip"):
        path = (source / row.file).resolve()
        if not row.text:
            skipped.append((row.line, row.file, "empty transcript"))
            continue
        if path in first_line:
            skipped.append((row.line, row.file, f"duplicate entry (first on line {first_line[path]})"))
            continue
        if not path.is_file():
            skipped.append((row.line, row.file, "missing file"))
            continue
        try:
            wave = load_audio(path, rate)
        except AudioError as err:
            detail = err.__cause__ or str(err).removeprefix(f"{path}: ")
            skipped.append((row.line, row.file, f"cannot decode audio: {detail}"))
            continue
        # The codec's convolutions need at least one hop of input to produce a frame.
        if len(wave) < hop:
            skipped.append((row.line, row.file, f"too short: {len(wave)} samples at {rate} Hz, need {hop}"))
            continue
        first_line[path] = row.line
        batcher.add(len(kept), wave)
        kept.append(row)
        samples += len(wave)
    batcher.flush()
    skipped.sort()

    if not kept:
        reasons = "; ".join(f"line {line} {file!r}: {reason}" for line, file, reason in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        raise ValueError(f"{metadata}: no usable rows, {len(skipped)} skipped: {reasons}{more}")

    codes = [batcher.codes[i] for i in range(len(kept))]
    channels = codes[0].shape[1]
    dataset = Dataset.from_dict(
        {
            "text": [row.text for row in kept],
            "codes": codes,
            "frames": [len(c) for c in codes],
            "source_id": [row.file for row in kept],
            "speaker": [row.speaker for row in kept],
        },
        features=Features(
            {
                "text": Value("string"),
                "codes": Array2D(shape=(None, channels), dtype="int16"),
                "frames": Value("int32"),
                "source_id": Value("string"),
                "speaker": Value("string"),
            }
        ),
    )
    info = {
        "codec": codec_identity(cfg.model),
        "sample_rate": rate,
        "num_codebooks": channels,
        "frame_rate": rate / hop,
        "source": str(source),
        "kept": len(kept),
        "skipped": len(skipped),
        "audio_seconds": round(samples / rate, 3),
        "frames": sum(len(c) for c in codes),
    }
    _write_atomically(dataset, info, skipped, output)
    print(
        f"prepared {info['kept']} clips ({info['audio_seconds']:.1f} s of audio, {info['frames']} frames) "
        f"from {metadata}, skipped {info['skipped']}\n"
        f"  dataset: {output}\n  report:  {output / INFO_FILE}, {output / SKIPPED_FILE}"
    )
    return info


def read_metadata(path: Path) -> tuple[list[Row], list[tuple[int, str, str]]]:
    """The rows of a metadata.csv, and its lines with the wrong number of fields as (line, file, reason)."""
    try:
        # utf-8-sig: a byte-order mark left by a spreadsheet export would otherwise hide the header's `file`.
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    rows: list[Row] = []
    bad: list[tuple[int, str, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if not rows and not bad and fields[0].strip() == "file":
            continue
        if len(fields) not in (2, 3):
            bad.append((number, fields[0].strip(), f"expected 2 or 3 fields, got {len(fields)}"))
            continue
        speaker = fields[2].strip() if len(fields) == 3 else ""
        rows.append(Row(number, fields[0].strip(), fields[1].strip(), speaker))
    return rows, bad


def _write_atomically(dataset: Dataset, info: dict, skipped: list[tuple[int, str, str]], output: Path) -> None:
    """Build the whole dataset in `output.tmp`, then swap it in with renames; the old one goes last."""
    tmp = output.with_name(output.name + ".tmp")
    old = output.with_name(output.name + ".old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    output.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(tmp))
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    lines = ["line\tfile\treason"] + [f"{line}\t{_tsv(file)}\t{_tsv(reason)}" for line, file, reason in skipped]
    (tmp / SKIPPED_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if output.exists():
        output.rename(old)
    tmp.rename(output)
    if old.exists():
        shutil.rmtree(old)


def _tsv(value: str) -> str:
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def read_prepare_info(dataset_dir: str | Path) -> dict:
    """The prepare.json of a prepared dataset: codec identity, rates and counts."""
    path = Path(dataset_dir) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset_dir} is not a prepared dataset (no {INFO_FILE}): run `dia-tpu prepare` first"
        )
    return json.loads(path.read_text())
