"""The on-disk side of `prepare`: each work shard written as it finishes, the shards merged in order into one
`datasets` folder with its `manifest.json` and `skipped.tsv` and swapped in whole, and both read back.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
from datasets import Array2D, Dataset, Features, Value, concatenate_datasets, load_from_disk

from dia_tpu.artifacts import write_failure
from dia_tpu.artifacts.owner import DATASET, aside, mark
from dia_tpu.config import Config
from dia_tpu.console import first_line
from dia_tpu.data.tokens import encode_text
from dia_tpu.errors import UserError
from dia_tpu.model.codec import codec_config, codec_identity

if TYPE_CHECKING:
    from dia_tpu.data.coder import Coder


@dataclass(frozen=True)
class CodesLayout:
    """What turns audio into a dataset's codes, decided once per run: codec, rates, channels, precision."""

    identity: dict  # the codec, as `codec_identity` names it
    fingerprint: str  # a hash of everything besides the audio that decides the codes; part of every key
    sample_rate: int
    hop: int
    channels: int  # codebooks per row: the codec's, twice for stereo
    stereo: bool


def codes_layout(cfg: Config) -> CodesLayout:
    codec, p = codec_config(cfg.model), cfg.prepare
    identity = codec_identity(cfg.model)
    fingerprint = hash_bytes(json.dumps([identity, p.stereo, p.mixed_precision], sort_keys=True).encode())
    channels = codec.n_codebooks * (2 if p.stereo else 1)
    return CodesLayout(identity, fingerprint, codec.sampling_rate, codec.hop_length, channels, p.stereo)


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


MANIFEST_FILE = "manifest.json"
SKIPPED_FILE = "skipped.tsv"
# Items kept but worth a look (clipped audio, a NUL byte in the transcript), as skipped.tsv lists the skipped.
FLAGGED_FILE = "flagged.tsv"
_COLUMNS = ("text", "codes", "frames", "duration", "source_id", "speaker", "language", "key")


@contextmanager
def _quietly() -> Iterator[None]:
    """Without `datasets`' own progress bars: prepare draws one bar for the whole run, and a bar per shard
    written or merged would bury it."""
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()


class PrepareError(UserError):
    """A bad input under `prepare.strict`, or a source with nothing usable; names the item and the reason."""


def read_prepare_info(dataset_dir: str | Path) -> dict:
    """The manifest.json of a prepared dataset: codec identity, rates, counts, the prepare config."""
    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset_dir} is not a prepared dataset (no {MANIFEST_FILE}): run `dia-tpu prepare` first"
        )
    return json.loads(path.read_text())


# A finished work shard's folder (a cut-off one is `shard_NNNNN.tmp`, which is never read).
_SHARD = re.compile(r"shard_\d{5}")
# What prepare's work folder holds: its shards, their marks and the per-process run notes.
_WORK_ENTRY = re.compile(r"shard_\d{5}(\.tmp|\.json|\.json\.tmp)?|run_\d+\.json|\.lock")
# The keys of every manifest prepare writes.
_MANIFEST_KEYS = {"codec", "fingerprint", "sample_rate", "num_codebooks", "kept", "frames"}


def earlier_dataset(folder: Path) -> bool:
    """A dataset prepared before datasets were marked: prepare's manifest beside a saved `datasets` table."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and _MANIFEST_KEYS <= set(manifest) and (folder / "state.json").is_file()


def earlier_work(folder: Path) -> bool:
    """A work folder of a prepare from before work folders were marked (cut off, so not removed): shards alone."""
    return all(_WORK_ENTRY.fullmatch(entry.name) for entry in folder.iterdir())


def load_cache(output: Path, work: Path, fingerprint: str) -> list[tuple[Dataset, dict[str, int]]]:
    """Rows already encoded with this codec and channel layout: the current dataset, then any finished work
    shard that reads back (one cut off by a crash or a full disk is left for the run to write again)."""
    folders = []
    if (output / MANIFEST_FILE).is_file() and read_prepare_info(output).get("fingerprint") == fingerprint:
        folders.append(output)
    if work.is_dir():
        folders += sorted(path for path in work.iterdir() if _SHARD.fullmatch(path.name) and path.is_dir())
    cache = []
    for folder in folders:
        try:
            dataset = load_from_disk(str(folder))
        except (OSError, ValueError) as err:
            if folder == output:
                raise PrepareError(
                    f"{output}: the earlier dataset cannot be read ({first_line(err)}); give another "
                    "--output or move it away"
                ) from err
            continue
        if "key" in dataset.column_names and len(dataset):
            cache.append((dataset, {key: i for i, key in enumerate(dataset["key"])}))
    return cache


def _features(channels: int, columns: dict) -> Features:
    return Features(
        columns
        | {
            "text": Value("string"),
            "codes": Array2D(shape=(None, channels), dtype="int16"),
            "frames": Value("int32"),
            "duration": Value("float32"),
            "source_id": Value("string"),
            "speaker": Value("string"),
            "language": Value("string"),
            "key": Value("string"),
        }
    )


def write_shard(work: Path, shard: int, rows: list[dict], channels: int, info: dict, columns: dict) -> None:
    """The shard's rows (prepare's columns and the coder's `columns`, name -> feature), then its json (the mark
    of a finished shard), each written then renamed; a failed write (a full disk) is a PrepareError saying so,
    with the part written removed."""
    folder, tmp = work / f"shard_{shard:05d}", work / f"shard_{shard:05d}.tmp"
    for stale in (tmp, folder):
        if stale.exists():
            shutil.rmtree(stale)
    note = work / f"shard_{shard:05d}.json.tmp"
    try:
        if rows:  # `datasets` cannot load a saved empty table back: a shard with every item skipped has none
            table = {name: [row[name] for row in rows] for name in (*_COLUMNS, *columns)}
            with _quietly():
                Dataset.from_dict(table, features=_features(channels, columns)).save_to_disk(str(tmp))
            tmp.rename(folder)
        note.write_text(json.dumps(info) + "\n")
        note.rename(work / f"shard_{shard:05d}.json")
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        note.unlink(missing_ok=True)
        raise PrepareError(
            f"could not write {tmp} ({write_failure(err, tmp)}); the shards finished before it are "
            "kept: run prepare again to go on from them"
        ) from err


def merge_shards(
    cfg: Config,
    coder: Coder,
    source: str,
    kind: str,
    output: Path,
    work: Path,
    shards: int,
    processes: int,
) -> None:
    """All shards, in order, into one dataset with its manifest (what the coder describes of itself in it) and
    skip report, swapped in whole."""
    parts, skipped, flagged, encoded, seconds = [], [], [], 0, Counter()
    for shard in range(shards):
        info = json.loads((work / f"shard_{shard:05d}.json").read_text())
        if (work / f"shard_{shard:05d}").is_dir():
            parts.append(load_from_disk(str(work / f"shard_{shard:05d}")))
        skipped += [tuple(entry) for entry in info["skipped"]]
        flagged += [tuple(entry) for entry in info.get("flagged", [])]
    for rank in range(processes):
        run = json.loads((work / f"run_{rank}.json").read_text())
        encoded += run["encoded"]
        seconds.update(run["seconds"])
    dataset = concatenate_datasets(parts) if parts else None
    if dataset is None or len(dataset) == 0:
        reasons = "; ".join(f"{source_id}: {reason}" for _, source_id, reason in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        raise PrepareError(f"{source}: no usable items, {len(skipped)} skipped: {reasons}{more}")
    layout = coder.layout
    rate, hop = layout.sample_rate, layout.hop
    durations = np.asarray(dataset["duration"], dtype=np.float64)
    manifest = {
        "codec": layout.identity,
        **coder.described,
        "fingerprint": layout.fingerprint,
        "sample_rate": rate,
        "frame_rate": rate / hop,
        "num_codebooks": layout.channels,
        "stereo": layout.stereo,
        "source": source,
        "kind": kind,
        "kept": len(dataset),
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(_reason_kind(reason) for _, _, reason in skipped)),
        "flagged": len(flagged),
        "flagged_by_reason": dict(Counter(_reason_kind(reason) for _, _, reason in flagged)),
        "split_pieces": sum("#" in source_id for source_id in dataset["source_id"]),
        "encoded": encoded,
        "audio_seconds": round(float(durations.sum()), 3),
        "audio_hours": round(float(durations.sum()) / 3600, 4),
        "frames": int(np.sum(dataset["frames"])),
        **({"long_text": _long_text(cfg, dataset["text"])} if coder.text_limit else {}),
        "processes": processes,
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "config": {"prepare": asdict(cfg.prepare), "model.codec": cfg.model.codec},
    }
    # Built beside `output` under a new name, then swapped in whole; the caller proved `output` replaceable.
    tmp, old = aside(output, "building"), aside(output, "replaced")
    try:
        tmp.mkdir(parents=True)
        mark(tmp, DATASET)  # first: what a killed prepare leaves is then known to be dia_tpu's
        with _quietly():
            dataset.save_to_disk(str(tmp), max_shard_size="500MB")
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        for name, entries in ((SKIPPED_FILE, skipped), (FLAGGED_FILE, flagged)):
            lines = ["index\tsource_id\treason"] + [f"{i}\t{_tsv(sid)}\t{_tsv(why)}" for i, sid, why in sorted(entries)]
            (tmp / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PrepareError(
            f"could not write the dataset beside {output} ({write_failure(err, tmp)}); every shard is "
            f"kept in {work}: run prepare again to merge them"
        ) from err
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists():
        output.rename(old)
    tmp.rename(output)
    if old.exists():
        shutil.rmtree(old)
    _say_summary(manifest, output)


def _long_text(cfg: Config, texts: list[str]) -> dict:
    """Transcripts longer than data.max_text_tokens bytes: counted and shown, never cut."""
    limit = cfg.data.max_text_tokens
    long = [t for t in texts if len(encode_text(t, cfg.data.language_tags)) > limit]
    return {"limit": limit, "count": len(long), "examples": [t[:80] for t in long[:3]]}


def _reason_kind(reason: str) -> str:
    """The reason without its particulars ("cannot decode audio: ..." -> "cannot decode audio")."""
    return reason.split(":")[0].split(" (")[0].strip()


def _say_summary(manifest: dict, output: Path) -> None:
    reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(manifest["skipped_by_reason"].items()))
    flags = ", ".join(f"{n} {kind}" for kind, n in sorted(manifest["flagged_by_reason"].items()))
    flagged = f"\n  {manifest['flagged']} items kept but flagged ({flags}): see {FLAGGED_FILE}" if flags else ""
    long = manifest.get("long_text", {"count": 0})
    print(
        f"prepared {manifest['kept']} items ({manifest['audio_hours']:.3f} h, {manifest['frames']} frames; "
        f"{manifest['encoded']} encoded, the rest reused) from {manifest['source']}, skipped {manifest['skipped']}"
        + (f" ({reasons})" if reasons else "")
        + flagged
        + (
            f"\n  {long['count']} transcripts are longer than data.max_text_tokens={long['limit']} bytes, e.g. "
            f"{long['examples'][0]!r}"
            if long["count"]
            else ""
        )
        + f"\n  dataset: {output}\n  report:  {output / MANIFEST_FILE} (and {SKIPPED_FILE}, {FLAGGED_FILE} beside it)"
    )


def _tsv(value: str) -> str:
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")
