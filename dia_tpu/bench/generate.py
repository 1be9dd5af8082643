"""`dia-tpu bench --task generate`: speech generation's real-time factor (seconds of audio per second) for a
config's model, at each batch size and for each decoding loop, with the bound that memory puts on decoding.

Generation runs `synthesize_codes`, the path of `dia-tpu generate` and of training samples, with Dia's sampling
settings, on a fixed dialogue. The model decides where each item ends (a random model usually runs to the
length asked for); the audio counted is what it generated, the codec's decoding to waveforms is left out.

Decoding one frame reads every decoder and output-head weight once, whatever the batch: at batch 1 the frame
cannot take less than those bytes over the device's copy bandwidth (`limits.copy_bandwidth`, measured here).
That floor, beside the measured time per frame, says how much of a decoding step is overhead.

Like the training bench, each setting runs in a fresh spawned process: compiled graphs, allocator and thread
state stay out of the next measurement.
"""

from __future__ import annotations

import time

import torch

from dia_tpu.bench import aligned, in_fresh_process, left_out, left_out_lines
from dia_tpu.bench.limits import copy_bandwidth
from dia_tpu.config import DECODINGS, Config
from dia_tpu.errors import UserError
from dia_tpu.generation.synthesize import GenerationSettings, synthesize_codes
from dia_tpu.model.build import build_model
from dia_tpu.model.codec import codec_config

SCRIPT = "[S1] This is how fast the model speaks. [S2] Measured against the clock, frame by frame."
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16}


def bench_generation(
    cfg: Config,
    seconds: float,
    batch_sizes: list[int],
    precisions: list[str],
    decodings: list[str],
    repeats: int = 2,
    skip_slow: bool = False,
) -> list[dict]:
    """One result per (precision, decoding, batch size): the best of `repeats` timed generations after one
    untimed one (which compiles, when compiling). A model in bf16 on a CPU without bf16 instructions is a row
    that says so instead, with `skip_slow`, and is measured after a warning without it."""
    if seconds <= 0 or repeats < 1 or min(batch_sizes, default=0) < 1:
        raise UserError(
            f"bench --task generate needs seconds > 0, repeats >= 1 and batch sizes >= 1, got "
            f"{seconds}, {repeats}, {batch_sizes}"
        )
    for precision in precisions:
        if precision not in DTYPES:
            raise UserError(f"precision {precision!r}: generation is measured in {', '.join(map(repr, DTYPES))}")
    for decoding in decodings:
        if decoding not in DECODINGS:
            raise UserError(f"decoding {decoding!r}: choose among {', '.join(DECODINGS)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    skipped = left_out(precisions, device, skip_slow)
    results = []
    for precision in precisions:
        if precision in skipped:
            results += [{"precision": precision, "decoding": d, "skipped": skipped[precision]} for d in decodings]
            continue
        for decoding in decodings:
            results += in_fresh_process(run_generation, cfg, seconds, batch_sizes, precision, decoding, repeats)
    return results


def run_generation(
    cfg: Config, seconds: float, batch_sizes: list[int], precision: str, decoding: str, repeats: int
) -> list[dict]:
    """All batch sizes of one setting in the current process; call it in a fresh one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[precision]
    model = build_model(cfg.model, "sdpa").to(device, dtype).eval()
    codec = codec_config(cfg.model)
    frame_rate = codec.sampling_rate / codec.hop_length
    settings = GenerationSettings(max_seconds=seconds, decoding=decoding)
    # Every decoder and output-head weight is read once per frame; the embeddings only at the rows looked up.
    read = sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if not name.startswith("model.encoder") and "embeddings" not in name
    )
    floor = read / copy_bandwidth(device)
    delay = max(model.config.delay_pattern)
    results = []
    for batch in batch_sizes:
        texts = [SCRIPT] * batch
        start = time.perf_counter()
        synthesize_codes(model, texts, settings, frame_rate)  # warm-up; compiles when compiling
        first = time.perf_counter() - start
        best, frames, longest = float("inf"), 0, 0
        for _ in range(repeats):
            start = time.perf_counter()
            clips = synthesize_codes(model, texts, settings, frame_rate)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed < best:
                best, frames, longest = elapsed, sum(len(c) for c in clips), max(len(c) for c in clips)
        # generate() runs until its longest item's EOS, plus the delayed channels' tail.
        steps = longest + 1 + delay
        results.append(
            {
                "precision": precision,
                "decoding": decoding,
                "batch_size": batch,
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "audio_seconds": frames / frame_rate,
                "seconds": best,
                "first_seconds": first,
                "real_time_factor": frames / frame_rate / best,
                "ms_per_step": 1000.0 * best / steps,
                "floor_ms_per_step": 1000.0 * floor,
                "weight_bytes_per_step": read,
            }
        )
    return results


def format_generation_table(results: list[dict]) -> str:
    header = (
        "precision",
        "decoding",
        "batch",
        "device",
        "threads",
        "audio s",
        "wall s",
        "x real time",
        "ms/step",
        "floor ms/step",
        "first call s",
    )
    rows = [header]
    for r in results:
        if "skipped" in r:
            rows.append((r["precision"], r["decoding"], "-", "not measured: see below", *[""] * 7))
            continue
        rows.append(
            (
                r["precision"],
                r["decoding"],
                str(r["batch_size"]),
                r["device"],
                str(r["torch_threads"]),
                f"{r['audio_seconds']:.1f}",
                f"{r['seconds']:.2f}",
                f"{r['real_time_factor']:.2f}",
                f"{r['ms_per_step']:.2f}",
                f"{r['floor_ms_per_step']:.2f}",
                f"{r['first_seconds']:.1f}",
            )
        )
    lines = aligned(rows)
    lines += left_out_lines(results)
    if any("skipped" not in r for r in results):
        lines.append(
            "x real time: seconds of audio generated per second (codes; the codec's decoding is not "
            "included); floor ms/step: the decoder's and output head's weights at the row's precision "
            "over the measured copy bandwidth, the least one decoding step can take; first call s: the "
            "untimed warm-up generation (compilation included)"
        )
    return "\n".join(lines)
