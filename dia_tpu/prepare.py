"""Any source of audio + transcripts -> a sharded dataset of undelayed int16 codec codes, resumably, in parallel.

Clips come from `dia_tpu.sources` in a fixed order and are cut into work shards of `prepare.shard_size`
items. Shard s is encoded by process s mod N (`accelerate launch -m dia_tpu prepare ...` runs N), and
written to `OUTPUT.work/` with the keys of its clips; a killed run leaves finished shards behind and the
next run skips every shard whose clips are unchanged. The main process then merges the shards, in order,
into `OUTPUT` (a `datasets` folder) with `manifest.json` and `skipped.tsv`, and swaps it in whole.

Every item carries a key: a hash of its audio bytes and of what turns audio into codes (codec, stereo, the
piece of a split clip). A re-run reuses the codes of every key already in the old dataset or a work
shard, so after fixing some inputs only those are encoded. Training reads only `OUTPUT`, memory-mapped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from datasets import Array2D, Dataset, Features, Value, concatenate_datasets, load_from_disk
from tqdm import tqdm

from dia_tpu.audio import AudioError, encode, read_audio, to_codec_input
from dia_tpu.config import Config
from dia_tpu.data import encode_text
from dia_tpu.model import build_codec, codec_config, codec_identity, codec_on_accelerator
from dia_tpu.sources import Clip, detect_kind, load_codes_file, read_clips

MANIFEST_FILE = "manifest.json"
SKIPPED_FILE = "skipped.tsv"
# Audio held back waiting for equal-length partners before it is encoded in smaller batches: only equal
# lengths can share a batch, and waiting for all of them would hold the whole corpus in memory.
PENDING_SECONDS = 600.0
_COLUMNS = ("text", "codes", "frames", "duration", "source_id", "speaker", "language", "key")


class PrepareError(ValueError):
    """A bad input under `prepare.strict`, or a source with nothing usable; names the item and the reason."""


@dataclass
class Piece:
    """What one output row is made of: a clip, or the part of a long clip between two timed segments."""

    clip: Clip
    source_id: str
    text: str
    key: str
    start: float = 0.0  # seconds into the clip's audio
    end: float | None = None


@dataclass
class Context:
    cfg: Config
    rank: int
    channels: int  # codebooks per row: the codec's, twice for stereo
    fingerprint: str  # what besides the audio decides the codes
    cache: list[tuple[Dataset, dict[str, int]]]  # earlier rows by key: the old dataset, old work shards
    sample_rate: int
    hop: int
    codec: object = None  # built on first use, so importing codes files never loads it
    seconds: Counter = field(default_factory=Counter)  # decode / resample / encode time on this process
    encoded: int = 0  # items this process encoded in this run


def prepare(cfg: Config, source: str | Path, output: str | Path, strict: bool | None = None) -> dict:
    """Encode every usable item of `source` into `output`; returns the manifest.

    Runs on every process of an `accelerate launch`; each encodes its share of the shards and the main
    process merges. A failed run never leaves half a dataset and never removes an earlier good one.
    """
    p = cfg.prepare
    strict = p.strict if strict is None else strict
    source, output = str(source), Path(output)
    kind = detect_kind(source, p)
    # Replacing `output` deletes it; refuse anything that is not an earlier prepared dataset (a mistyped
    # path could name the source folder itself).
    if output.exists() and not (output / MANIFEST_FILE).is_file() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} exists and is not a prepared dataset; choose another output folder")
    # Like Accelerator, honour ACCELERATE_USE_CPU: a CPU multi-process launch then joins its gloo group.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    work = output.with_name(output.name + ".work")
    codec_cfg = codec_config(cfg.model)
    identity = codec_identity(cfg.model)
    fingerprint = _hash(json.dumps([identity, p.stereo], sort_keys=True).encode())
    ctx = Context(cfg, state.process_index, codec_cfg.n_codebooks * (2 if p.stereo else 1), fingerprint,
                  _load_cache(output, work, fingerprint), codec_cfg.sampling_rate, codec_cfg.hop_length)  # fmt: skip
    if state.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    bar = tqdm(desc=f"prepare [{state.process_index}]" if state.num_processes > 1 else "prepare", unit="h",
               position=state.process_index, bar_format="{desc}: {n:.4f} h of audio [{elapsed}] {postfix}")  # fmt: skip
    started, shards, pending = time.perf_counter(), 0, []
    for clip in read_clips(source, p):
        if pending and clip.index // p.shard_size != shards:
            _run_shard(ctx, work, shards, pending, state.num_processes, strict, bar, started)
            shards, pending = shards + 1, []
        pending.append(clip)
    if pending:
        _run_shard(ctx, work, shards, pending, state.num_processes, strict, bar, started)
        shards += 1
    bar.close()
    # What this run did on this process (finished shards of an earlier run are not counted again).
    run = {"encoded": ctx.encoded, "seconds": dict(ctx.seconds)}
    (work / f"run_{state.process_index}.json").write_text(json.dumps(run) + "\n")
    state.wait_for_everyone()
    if state.is_main_process:
        _merge(cfg, source, kind, output, work, shards, identity, ctx.channels, state.num_processes)
    state.wait_for_everyone()
    return read_prepare_info(output)


def _run_shard(ctx: Context, work: Path, shard: int, clips: list[Clip], processes: int, strict: bool, bar,
               started: float) -> None:  # fmt: skip
    """Encode shard `shard` if it is this process's and not already done for exactly these clips."""
    if shard % processes != ctx.rank:
        return
    pieces, skipped = [], []
    for clip in clips:
        if clip.problem is not None:
            _skip(skipped, clip.index, clip.source_id, clip.problem, strict)
            continue
        pieces.append(Piece(clip, clip.source_id, clip.text, _clip_key(clip, ctx.fingerprint)))
    keys = [piece.key for piece in pieces] + [f"skip:{index}:{reason}" for index, _, reason in skipped]
    done = work / f"shard_{shard:05d}.json"
    if done.is_file() and json.loads(done.read_text())["keys"] == keys:
        return
    rows, encoded = _encode_pieces(ctx, pieces, skipped, strict, bar, started)
    ctx.encoded += encoded
    skipped.sort()
    _write_shard(work, shard, rows, ctx.channels, {"keys": keys, "skipped": skipped})


def _encode_pieces(ctx: Context, pieces: list[Piece], skipped: list, strict: bool, bar,
                   started: float) -> tuple[list[dict], int]:  # fmt: skip
    """Rows for the pieces that make it, in order, reusing cached codes by key. Returns (rows, encoded)."""
    p = ctx.cfg.prepare
    rows: list[dict] = []
    waves: dict[int, list[np.ndarray]] = {}  # row -> its audio, for the rows still to encode
    encoded = 0
    for piece in pieces:
        try:
            if piece.clip.codes_file is not None:
                codes = load_codes_file(piece.clip.codes_file, ctx.channels, p.codes_layout)
                rows.append(_row(piece, codes, len(codes) * ctx.hop / ctx.sample_rate))
                continue
            if (cached := _cached(ctx, piece.key)) is not None:
                rows.append(_row(piece, *cached))
                continue
            for part, channels in _decode(ctx, piece):
                seconds = len(channels[0]) / ctx.sample_rate
                if (cached := _cached(ctx, part.key)) is not None:
                    rows.append(_row(part, *cached))
                    continue
                waves[len(rows)] = channels
                rows.append(_row(part, None, seconds))
                encoded += 1
                if sum(len(c[0]) for c in waves.values()) > PENDING_SECONDS * ctx.sample_rate:
                    _fill(rows, _encode_all(ctx, waves))
                    waves = {}
                bar.update(seconds / 3600)
                elapsed = time.perf_counter() - started
                bar.set_postfix_str(f"{bar.n / elapsed:.5f} h/s ({bar.n * 3600 / elapsed:.1f}x real time)")
        except (AudioError, ValueError) as err:
            _skip(skipped, piece.clip.index, piece.source_id, str(err), strict)
    _fill(rows, _encode_all(ctx, waves))
    return rows, encoded


def _fill(rows: list[dict], codes: dict[int, np.ndarray]) -> None:
    for slot, value in codes.items():
        rows[slot]["codes"], rows[slot]["frames"] = value, len(value)


def _decode(ctx: Context, piece: Piece) -> list[tuple[Piece, list[np.ndarray]]]:
    """The piece's audio at the codec's rate, as (piece, [mono] or [left, right]); a clip longer than
    `prepare.max_seconds` comes back as the pieces its timing splits it into."""
    p, rate = ctx.cfg.prepare, ctx.sample_rate
    tick = time.perf_counter()
    data, source_rate = read_audio(piece.clip.audio, p.min_sample_rate)
    ctx.seconds["decode"] += time.perf_counter() - tick
    tick = time.perf_counter()
    channels = to_codec_input(data, source_rate, rate, p.stereo)
    ctx.seconds["resample"] += time.perf_counter() - tick
    seconds = len(channels[0]) / rate
    if len(channels[0]) < ctx.hop:
        raise AudioError(f"too short: {len(channels[0])} samples at {rate} Hz, need {ctx.hop}")
    if seconds <= p.max_seconds:
        return [(piece, channels)]
    spans = split_at_pauses(piece.clip.segments, seconds, p.max_seconds)
    if spans is None:
        raise AudioError(
            f"{seconds:.1f} s is longer than prepare.max_seconds={p.max_seconds:g} and the source gives no "
            "word or segment timing to split it at"
        )
    parts = []
    for k, (start, end, text) in enumerate(spans):
        a, b = round(start * rate), round(end * rate)
        part = Piece(piece.clip, f"{piece.source_id}#{k}", text, f"{piece.key}@{start:.3f}-{end:.3f}", start, end)
        parts.append((part, [c[a:b] for c in channels]))
    return parts


def split_at_pauses(segments, total: float, limit: float) -> list[tuple[float, float, str]] | None:
    """Cut a long clip into spans no longer than `limit` seconds, each with its own segments' text.

    Cuts fall in the middle of pauses between timed segments (never inside one), as late as the limit
    allows. None when there is no timing, or when one segment alone is longer than the limit.
    """
    if not segments:
        return None
    ordered = sorted(segments, key=lambda s: s.start)
    if any(s.end - s.start > limit for s in ordered):
        return None
    spans, start, texts = [], 0.0, []
    for i, segment in enumerate(ordered):
        if texts and segment.end - start > limit:
            cut = (ordered[i - 1].end + segment.start) / 2
            spans.append((start, cut, " ".join(texts)))
            start, texts = cut, []
        texts.append(segment.text.strip())
    end = total if total - start <= limit else ordered[-1].end + min((total - ordered[-1].end) / 2, 0.25)
    spans.append((start, end, " ".join(texts)))
    if any(e - s > limit for s, e, _ in spans):
        return None
    return spans


def _encode_all(ctx: Context, waves: dict[int, list[np.ndarray]]) -> dict[int, np.ndarray]:
    """Codes [T, C] per slot; equal lengths share codec batches (exact), stereo channels side by side."""
    if not waves:
        return {}
    if ctx.codec is None:
        ctx.codec = codec_on_accelerator(build_codec(ctx.cfg.model), PartialState().device)
    p = ctx.cfg.prepare
    entries = [((slot, c), wave) for slot, channels in waves.items() for c, wave in enumerate(channels)]
    by_length: dict[int, list] = {}
    for entry in entries:
        by_length.setdefault(len(entry[1]), []).append(entry)
    codes: dict[tuple[int, int], np.ndarray] = {}
    tick = time.perf_counter()
    precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p.mixed_precision)
    device = next(ctx.codec.parameters()).device
    autocast = torch.autocast(device.type, dtype=precision) if precision else contextlib.nullcontext()
    with autocast:
        for group in by_length.values():
            for i in range(0, len(group), p.batch_size):
                batch = group[i : i + p.batch_size]
                for (name, _), result in zip(batch, encode(ctx.codec, [w for _, w in batch]), strict=True):
                    codes[name] = result
    ctx.seconds["encode"] += time.perf_counter() - tick
    return {slot: np.concatenate([codes[(slot, c)] for c in range(len(chs))], axis=1) for slot, chs in waves.items()}


def _row(piece: Piece, codes: np.ndarray | None, seconds: float) -> dict:
    return {
        "text": piece.text,
        "codes": codes,
        "frames": 0 if codes is None else len(codes),
        "duration": round(seconds, 4),
        "source_id": piece.source_id,
        "speaker": piece.clip.speaker,
        "language": piece.clip.language,
        "key": piece.key,
    }


def _skip(skipped: list, index: int, source_id: str, reason: str, strict: bool) -> None:
    if strict:
        raise PrepareError(f"{source_id}: {reason} (prepare.strict stops at the first bad input)")
    skipped.append((index, source_id, reason))


def _clip_key(clip: Clip, fingerprint: str) -> str:
    content = clip.codes_file.read_bytes() if clip.codes_file is not None else clip.audio.content()
    return _hash(content + fingerprint.encode())


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _cached(ctx: Context, key: str) -> tuple[np.ndarray, float] | None:
    """(codes, seconds of audio) encoded earlier for this key (same audio, codec and layout), or None."""
    for dataset, rows in ctx.cache:
        if key in rows:
            row = dataset[rows[key]]
            return np.asarray(row["codes"], dtype=np.int16), row["duration"]
    return None


def _load_cache(output: Path, work: Path, fingerprint: str) -> list[tuple[Dataset, dict[str, int]]]:
    """Rows already encoded with this codec and channel layout: the current dataset, then any work shards."""
    folders = []
    if (output / MANIFEST_FILE).is_file() and read_prepare_info(output).get("fingerprint") == fingerprint:
        folders.append(output)
    folders += sorted(path for path in work.glob("shard_*") if path.is_dir()) if work.is_dir() else []
    cache = []
    for folder in folders:
        dataset = load_from_disk(str(folder))
        if "key" in dataset.column_names and len(dataset):
            cache.append((dataset, {key: i for i, key in enumerate(dataset["key"])}))
    return cache


def _features(channels: int) -> Features:
    return Features({
        "text": Value("string"),
        "codes": Array2D(shape=(None, channels), dtype="int16"),
        "frames": Value("int32"),
        "duration": Value("float32"),
        "source_id": Value("string"),
        "speaker": Value("string"),
        "language": Value("string"),
        "key": Value("string"),
    })  # fmt: skip


def _write_shard(work: Path, shard: int, rows: list[dict], channels: int, info: dict) -> None:
    """The shard's rows, then its json (the mark of a finished shard), each written then renamed."""
    folder, tmp = work / f"shard_{shard:05d}", work / f"shard_{shard:05d}.tmp"
    for stale in (tmp, folder):
        if stale.exists():
            shutil.rmtree(stale)
    if rows:  # `datasets` cannot load a saved empty table back: a shard with every item skipped has none
        table = {name: [row[name] for row in rows] for name in _COLUMNS}
        Dataset.from_dict(table, features=_features(channels)).save_to_disk(str(tmp))
        tmp.rename(folder)
    note = work / f"shard_{shard:05d}.json.tmp"
    note.write_text(json.dumps(info) + "\n")
    note.rename(work / f"shard_{shard:05d}.json")


def _merge(cfg: Config, source: str, kind: str, output: Path, work: Path, shards: int, identity: dict,
           channels: int, processes: int) -> None:  # fmt: skip
    """All shards, in order, into one dataset with its manifest and skip report, swapped in whole."""
    parts, skipped, encoded, seconds = [], [], 0, Counter()
    for shard in range(shards):
        info = json.loads((work / f"shard_{shard:05d}.json").read_text())
        if (work / f"shard_{shard:05d}").is_dir():
            parts.append(load_from_disk(str(work / f"shard_{shard:05d}")))
        skipped += [tuple(entry) for entry in info["skipped"]]
    for rank in range(processes):
        run = json.loads((work / f"run_{rank}.json").read_text())
        encoded += run["encoded"]
        seconds.update(run["seconds"])
    dataset = concatenate_datasets(parts) if parts else None
    if dataset is None or len(dataset) == 0:
        reasons = "; ".join(f"{source_id}: {reason}" for _, source_id, reason in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        raise PrepareError(f"{source}: no usable items, {len(skipped)} skipped: {reasons}{more}")
    codec = codec_config(cfg.model)
    rate, hop = codec.sampling_rate, codec.hop_length
    durations = np.asarray(dataset["duration"], dtype=np.float64)
    manifest = {
        "codec": identity,
        "fingerprint": _hash(json.dumps([identity, cfg.prepare.stereo], sort_keys=True).encode()),
        "sample_rate": rate,
        "frame_rate": rate / hop,
        "num_codebooks": channels,
        "stereo": cfg.prepare.stereo,
        "source": source,
        "kind": kind,
        "kept": len(dataset),
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(_reason_kind(reason) for _, _, reason in skipped)),
        "split_pieces": sum("#" in source_id for source_id in dataset["source_id"]),
        "encoded": encoded,
        "audio_seconds": round(float(durations.sum()), 3),
        "audio_hours": round(float(durations.sum()) / 3600, 4),
        "frames": int(np.sum(dataset["frames"])),
        "long_text": _long_text(cfg, dataset["text"]),
        "processes": processes,
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "config": {"prepare": asdict(cfg.prepare), "model.codec": cfg.model.codec},
    }
    tmp, old = output.with_name(output.name + ".tmp"), output.with_name(output.name + ".old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    output.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(tmp), max_shard_size="500MB")
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    lines = ["index\tsource_id\treason"] + [f"{i}\t{_tsv(sid)}\t{_tsv(reason)}" for i, sid, reason in sorted(skipped)]
    (tmp / SKIPPED_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if output.exists():
        output.rename(old)
    tmp.rename(output)
    for leftover in (old, work):
        if leftover.exists():
            shutil.rmtree(leftover)
    _say_summary(manifest, output)


def _long_text(cfg: Config, texts: list[str]) -> dict:
    """Transcripts longer than data.max_text_tokens bytes: counted and shown, never cut."""
    limit = cfg.data.max_text_tokens
    long = [t for t in texts if len(encode_text(t)) > limit]
    return {"limit": limit, "count": len(long), "examples": [t[:80] for t in long[:3]]}


def _reason_kind(reason: str) -> str:
    """The reason without its particulars ("cannot decode audio: ..." -> "cannot decode audio")."""
    return reason.split(":")[0].split(" (")[0].strip()


def _say_summary(manifest: dict, output: Path) -> None:
    reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(manifest["skipped_by_reason"].items()))
    long = manifest["long_text"]
    print(
        f"prepared {manifest['kept']} items ({manifest['audio_hours']:.3f} h, {manifest['frames']} frames; "
        f"{manifest['encoded']} encoded, the rest reused) from {manifest['source']}, skipped {manifest['skipped']}"
        + (f" ({reasons})" if reasons else "")
        + (f"\n  {long['count']} transcripts are longer than data.max_text_tokens={long['limit']} bytes, e.g. "
           f"{long['examples'][0]!r}" if long["count"] else "")
        + f"\n  dataset: {output}\n  report:  {output / MANIFEST_FILE}, {output / SKIPPED_FILE}"
    )  # fmt: skip


def _tsv(value: str) -> str:
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def read_prepare_info(dataset_dir: str | Path) -> dict:
    """The manifest.json of a prepared dataset: codec identity, rates, counts, the prepare config."""
    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset_dir} is not a prepared dataset (no {MANIFEST_FILE}): run `dia-tpu prepare` first"
        )
    return json.loads(path.read_text())
