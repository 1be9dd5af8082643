"""Any source of audio + transcripts -> a sharded dataset of undelayed int16 codec codes, resumably, in parallel.

Clips come from `dia_tpu.data.sources` in a fixed order and are cut into work shards of `prepare.shard_size`
items. Shard s is encoded by process s mod N (`accelerate launch -m dia_tpu prepare ...` runs N), and
written to `OUTPUT.work/` with the keys of its clips; a killed run leaves finished shards behind and the
next run skips every shard whose clips are unchanged. The main process then merges the shards, in order,
into `OUTPUT` (a `datasets` folder) with `manifest.json` and `skipped.tsv`, and swaps it in whole; what is
written to disk, and how, is `dia_tpu.data.shards`.

Every item carries a key: a hash of its audio bytes and of what turns audio into codes (codec, stereo, the
piece of a split clip). A re-run reuses the codes of every key already in the old dataset or a work
shard, so after fixing some inputs only those are encoded. Training reads only `OUTPUT`, memory-mapped.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from datasets import Dataset
from tqdm import tqdm

from dia_tpu.artifacts.lock import FolderLock
from dia_tpu.artifacts.owner import DATASET, PREPARE_WORK, check_replaceable
from dia_tpu.config import Config
from dia_tpu.data.audio import AudioError, header_seconds, read_audio, to_codec_input
from dia_tpu.data.clips import Clip, Segment, split_at_pauses
from dia_tpu.data.coder import Coder, DacCoder
from dia_tpu.data.codes_files import load_codes_file
from dia_tpu.data.shards import (
    CodesLayout,
    PrepareError,
    earlier_dataset,
    earlier_work,
    hash_bytes,
    load_cache,
    merge_shards,
    read_prepare_info,
    write_shard,
)
from dia_tpu.data.sources import detect_kind, read_clips

# Audio held back waiting for equal-length partners before it is encoded in smaller batches: only equal
# lengths can share a batch, and waiting for all of them would hold the whole corpus in memory.
PENDING_SECONDS = 600.0


@dataclass
class Piece:
    """What one output row is made of: a clip, or the part of a long clip between two timed segments."""

    clip: Clip
    source_id: str
    text: str
    key: str
    segments: list[Segment] | None  # its timing, in seconds from its own start


@dataclass
class Context:
    cfg: Config
    rank: int
    coder: Coder
    cache: list[tuple[Dataset, dict[str, int]]]  # earlier rows by key: the old dataset, old work shards
    seconds: Counter = field(default_factory=Counter)  # decode / resample / encode time on this process
    encoded: int = 0  # items this process encoded in this run
    flagged: list = field(default_factory=list)  # (index, source_id, why) of the shard's items kept but doubtful
    bar: tqdm | None = None  # hours of audio encoded by this process, and hours per second
    started: float = field(default_factory=time.perf_counter)

    @property
    def layout(self) -> CodesLayout:
        return self.coder.layout


def prepare(
    cfg: Config, source: str | Path, output: str | Path, strict: bool | None = None, coder: Coder | None = None
) -> dict:
    """Encode every usable item of `source` into `output` with `coder` (the model family's: `Family.coder`;
    Dia's DAC by default); returns the manifest.

    Runs on every process of an `accelerate launch`; each encodes its share of the shards and the main
    process merges. A failed run never leaves half a dataset and never removes an earlier good one.
    """
    if coder is None and cfg.model.family == "dia2":
        raise PrepareError("model.family=dia2: prepare with the family's coder (dia-tpu prepare picks it)")
    coder = coder or DacCoder(cfg)
    p = cfg.prepare
    strict = p.strict if strict is None else strict
    source, output = str(source), Path(output)
    kind = detect_kind(source, p)
    # Replacing `output` deletes it: only an earlier dataset, or a new or empty folder, is replaced (a mistyped
    # path could name the source folder itself, or a folder that merely holds a manifest.json).
    check_replaceable(output, DATASET, "--output", earlier=earlier_dataset)
    work = output.with_name(output.name + ".work")
    check_replaceable(work, PREPARE_WORK, "prepare's work folder", earlier=earlier_work)
    # Opening the source reports what is wrong with it (a missing file, a hub id out of reach) before
    # anything is written or drawn.
    clips = read_clips(source, p)
    first = next(clips, None)
    # Like Accelerator, honour ACCELERATE_USE_CPU: a CPU multi-process launch then joins its gloo group.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    # One prepare per output: the main process claims the work folder and holds its lock to the end.
    lock = FolderLock(work, PREPARE_WORK, "prepare's work folder", "prepare", earlier=earlier_work)
    if state.is_main_process:
        lock.acquire()
    state.wait_for_everyone()
    merged = False
    try:
        clips = itertools.chain([first] if first else [], clips)
        _prepare_shards(cfg, coder, state, source, kind, output, work, clips, strict)
        merged = True
    finally:
        if state.is_main_process:
            lock.release(remove=merged)  # a failed run keeps its finished shards for the next
    state.wait_for_everyone()
    return read_prepare_info(output)


def _prepare_shards(
    cfg: Config, coder: Coder, state: PartialState, source: str, kind: str, output: Path, work: Path, clips, strict
) -> None:
    p = cfg.prepare
    ctx = Context(cfg, state.process_index, coder, load_cache(output, work, coder.layout.fingerprint))
    ctx.bar = tqdm(
        desc=f"prepare [{state.process_index}]" if state.num_processes > 1 else "prepare",
        position=state.process_index,
        bar_format="{desc}: {n:.4f} h of audio encoded [{elapsed}] {postfix}",
    )
    shards, pending = 0, []
    for clip in clips:
        if pending and clip.index // p.shard_size != shards:
            _run_shard(ctx, work, shards, pending, state.num_processes, strict)
            shards, pending = shards + 1, []
        pending.append(clip)
    if pending:
        _run_shard(ctx, work, shards, pending, state.num_processes, strict)
        shards += 1
    ctx.bar.close()
    # What this run did on this process (finished shards of an earlier run are not counted again).
    run = {"encoded": ctx.encoded, "seconds": dict(ctx.seconds)}
    (work / f"run_{state.process_index}.json").write_text(json.dumps(run) + "\n")
    state.wait_for_everyone()
    if state.is_main_process:
        merge_shards(cfg, coder, source, kind, output, work, shards, state.num_processes)


def _run_shard(ctx: Context, work: Path, shard: int, clips: list[Clip], processes: int, strict: bool) -> None:
    """Encode shard `shard` if it is this process's and not already done for exactly these clips."""
    if shard % processes != ctx.rank:
        return
    pieces, skipped = [], []
    ctx.flagged = []
    for clip in clips:
        if clip.problem is not None:
            _skip(skipped, clip.index, clip.source_id, clip.problem, strict)
            continue
        if "\0" in clip.text:
            ctx.flagged.append((clip.index, clip.source_id, "transcript holds a NUL byte"))
        key = _clip_key(clip, ctx.layout.fingerprint, ctx.coder.key(clip.text, clip.segments))
        pieces.append(Piece(clip, clip.source_id, clip.text, key, clip.segments))
    keys = [piece.key for piece in pieces] + [f"skip:{index}:{reason}" for index, _, reason in skipped]
    done = work / f"shard_{shard:05d}.json"
    if done.is_file() and json.loads(done.read_text())["keys"] == keys:
        return
    rows, encoded = _encode_pieces(ctx, pieces, skipped, strict)
    ctx.encoded += encoded
    skipped.sort()
    info = {"keys": keys, "skipped": skipped, "flagged": sorted(ctx.flagged)}
    write_shard(work, shard, rows, ctx.layout.channels, info, ctx.coder.columns)


def _encode_pieces(ctx: Context, pieces: list[Piece], skipped: list, strict: bool) -> tuple[list[dict], int]:
    """Rows for the pieces that make it, in order, reusing cached codes by key. Returns (rows, encoded)."""
    p = ctx.cfg.prepare
    rows: list[dict] = []
    waves: dict[int, list[np.ndarray]] = {}  # row -> its audio, for the rows still to encode
    encoded = 0
    for piece in pieces:
        try:
            if piece.clip.codes_file is not None:
                codes = load_codes_file(piece.clip.codes_file, ctx.layout.channels, p.codes_layout)
                seconds = len(codes) * ctx.layout.hop / ctx.layout.sample_rate
                rows.append(_row(piece, codes, seconds, _annotate(ctx, piece, None, seconds)))
                continue
            if (cached := _cached(ctx, piece.key)) is not None:
                rows.append(_row(piece, **cached))
                continue
            for part, channels in _decode(ctx, piece):
                seconds = len(channels[0]) / ctx.layout.sample_rate
                if (cached := _cached(ctx, part.key)) is not None:
                    rows.append(_row(part, **cached))
                    continue
                extra = _annotate(ctx, part, channels, seconds)
                waves[len(rows)] = channels
                rows.append(_row(part, None, seconds, extra))
                encoded += 1
                if sum(len(c[0]) for c in waves.values()) > PENDING_SECONDS * ctx.layout.sample_rate:
                    _fill(ctx, rows, _encode_all(ctx, waves))
                    waves = {}
        except (AudioError, ValueError) as err:
            _skip(skipped, piece.clip.index, piece.source_id, str(err), strict)
    _fill(ctx, rows, _encode_all(ctx, waves))
    return rows, encoded


def _fill(ctx: Context, rows: list[dict], codes: dict[int, np.ndarray]) -> None:
    """Put freshly encoded codes into their rows and count their audio on the progress bar."""
    for slot, value in codes.items():
        rows[slot]["codes"], rows[slot]["frames"] = value, len(value)
        ctx.bar.update(rows[slot]["duration"] / 3600)
    if codes:
        hours, elapsed = ctx.bar.n, time.perf_counter() - ctx.started
        ctx.bar.set_postfix_str(f"{hours / elapsed:.5f} h/s, {hours * 3600 / elapsed:.2f}x real time")


def _decode(ctx: Context, piece: Piece) -> list[tuple[Piece, list[np.ndarray]]]:
    """The piece's audio at the codec's rate, as (piece, [mono] or [left, right]); a clip longer than
    `prepare.max_seconds` comes back as the pieces its timing splits it into."""
    p, rate = ctx.cfg.prepare, ctx.layout.sample_rate
    header = header_seconds(piece.clip.audio)
    if not piece.clip.segments and header is not None and header > p.max_seconds:
        raise AudioError(_too_long(header, p.max_seconds))  # known from the header: nothing is decoded
    tick = time.perf_counter()
    data, source_rate = read_audio(piece.clip.audio, p.min_sample_rate)
    ctx.seconds["decode"] += time.perf_counter() - tick
    if (peak := float(np.abs(data).max())) > 1.0:
        ctx.flagged.append((piece.clip.index, piece.source_id, f"clipped: peak {peak:.2f}, above full scale"))
    tick = time.perf_counter()
    channels = to_codec_input(data, source_rate, rate, p.stereo)
    ctx.seconds["resample"] += time.perf_counter() - tick
    seconds = len(channels[0]) / rate
    if len(channels[0]) < ctx.layout.hop:
        raise AudioError(f"too short: {len(channels[0])} samples at {rate} Hz, need {ctx.layout.hop}")
    if seconds <= p.max_seconds:
        return [(piece, channels)]
    spans = split_at_pauses(piece.clip.segments, seconds, p.max_seconds)
    if spans is None:
        raise AudioError(_too_long(seconds, p.max_seconds))
    parts = []
    for k, (start, end, text) in enumerate(spans):
        a, b = round(start * rate), round(end * rate)
        inside = [
            replace(s, start=s.start - start, end=s.end - start) for s in piece.segments if start <= s.start < end
        ]
        part = Piece(piece.clip, f"{piece.source_id}#{k}", text, f"{piece.key}@{start:.3f}-{end:.3f}", inside)
        parts.append((part, [c[a:b] for c in channels]))
    return parts


def _too_long(seconds: float, limit: float) -> str:
    return (
        f"{seconds:.1f} s is longer than prepare.max_seconds={limit:g} and the source gives no word or segment "
        "timing to split it at"
    )


def _encode_all(ctx: Context, waves: dict[int, list[np.ndarray]]) -> dict[int, np.ndarray]:
    """Codes [T, C] per slot; equal lengths share codec batches (exact), stereo channels side by side."""
    if not waves:
        return {}
    entries = [((slot, c), wave) for slot, channels in waves.items() for c, wave in enumerate(channels)]
    by_length: dict[int, list] = {}
    for entry in entries:
        by_length.setdefault(len(entry[1]), []).append(entry)
    codes: dict[tuple[int, int], np.ndarray] = {}
    tick = time.perf_counter()
    for group in by_length.values():
        for i in range(0, len(group), ctx.cfg.prepare.batch_size):
            batch = group[i : i + ctx.cfg.prepare.batch_size]
            for (name, _), result in zip(batch, ctx.coder.encode([w for _, w in batch]), strict=True):
                codes[name] = result
    ctx.seconds["encode"] += time.perf_counter() - tick
    return {slot: np.concatenate([codes[(slot, c)] for c in range(len(chs))], axis=1) for slot, chs in waves.items()}


def _annotate(ctx: Context, piece: Piece, channels: list[np.ndarray] | None, seconds: float) -> dict:
    """The coder's extra columns for a piece (none for Dia), timed."""
    if not ctx.coder.columns:
        return {}
    tick = time.perf_counter()
    try:
        return ctx.coder.annotate(piece.text, piece.segments, channels, seconds, piece.clip.language)
    finally:
        ctx.seconds["annotate"] += time.perf_counter() - tick


def _row(piece: Piece, codes: np.ndarray | None, duration: float, extra: dict) -> dict:
    return {
        **extra,
        "text": piece.text,
        "codes": codes,
        "frames": 0 if codes is None else len(codes),
        "duration": round(duration, 4),
        "source_id": piece.source_id,
        "speaker": piece.clip.speaker,
        "language": piece.clip.language,
        "key": piece.key,
    }


def _skip(skipped: list, index: int, source_id: str, reason: str, strict: bool) -> None:
    if strict:
        raise PrepareError(f"{source_id}: {reason} (prepare.strict stops at the first bad input)")
    skipped.append((index, source_id, reason))


def _clip_key(clip: Clip, fingerprint: str, extra: bytes) -> str:
    content = clip.codes_file.read_bytes() if clip.codes_file is not None else clip.audio.content()
    return hash_bytes(content + fingerprint.encode() + extra)


def _cached(ctx: Context, key: str) -> dict | None:
    """What was made earlier for this key (same audio, codec and layout, and what the coder adds to keys): the
    codes, the seconds of audio and the coder's columns, or None."""
    for dataset, rows in ctx.cache:
        if key in rows:
            row = dataset[rows[key]]
            codes = np.asarray(row["codes"], dtype=np.int16)
            return {"codes": codes, "duration": row["duration"], "extra": {k: row[k] for k in ctx.coder.columns}}
    return None
