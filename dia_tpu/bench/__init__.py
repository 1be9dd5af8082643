"""`dia-tpu bench`: speed measured against the device's own limits: training steps (`train`), speech generation
(`generate`); the limits themselves, measured in the same process (`limits`). What both benches share: each
setting measured in a process of its own, and the result as an aligned table."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from dia_tpu.precision import choose


def in_fresh_process(work: Callable, *args):
    """`work(*args)` in a newly spawned process, so that no state of an earlier measurement (Accelerate's
    process-wide precision, the peak resident size, allocator and compilation caches) carries into it."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(work, *args).result()


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as lines with every column right-aligned to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def left_out(precisions: list[str], device: str, skip_slow: bool) -> dict[str, str]:
    """{precision: why it is not measured} for the precisions this device has no instructions for, when
    `skip_slow`; without it their warnings are printed and they are measured."""
    out = {}
    for precision in precisions:
        choice = choose(precision, device, "--precision")
        if choice.slow and skip_slow:
            out[precision] = f"{choice.reason}; --precision {precision} measures it anyway"
        elif choice.slow:
            print(choice.note, flush=True)
    return out


def left_out_lines(results: list[dict]) -> list[str]:
    """The table's lines that say why a row was not measured, once per precision."""
    return sorted({f"{r['precision']} not measured: {r['skipped']}" for r in results if "skipped" in r})
