"""Which precision is fast where a run is: a CPU's low-precision matrix instructions, a probe that times them,
and what `mixed_precision: auto` picks.

A CPU without bf16 (or fp16) matrix instructions runs bf16 matrix products through slow conversion code: on a
2-core AMD EPYC (avx2 only) a bf16 training step of the bench model took 52 times as long as the fp32 step.
A Xeon with AMX, an ARM core with the BF16 extension or any recent GPU or TPU runs them faster than fp32.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# The instruction-set features (as the kernel names them in /proc/cpuinfo) that make each precision's matrix
# products native, per architecture: any one is enough.
NATIVE_FEATURES = {
    "x86": {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")},
    "arm": {"bf16": ("bf16",), "fp16": ("asimdhp",)},
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_SIZE = 128  # fp32 takes well under a millisecond at this size; bf16 without native products, a few


@dataclass(frozen=True)
class CpuFeatures:
    """What the kernel says about this CPU: its architecture family and feature flags (None: not readable,
    e.g. on macOS)."""

    arch: str  # "x86", "arm" or the machine name
    flags: frozenset[str] | None

    def native(self, precision: str) -> bool | None:
        """Whether `precision`'s matrix products have native instructions here (None: not known)."""
        wanted = NATIVE_FEATURES.get(self.arch, {}).get(precision)
        if wanted is None or self.flags is None:
            return None
        return any(feature in self.flags for feature in wanted)

    def missing(self, precision: str) -> str:
        """The features whose absence `native` found, in words: "avx512_bf16 or amx_bf16"."""
        return " or ".join(NATIVE_FEATURES.get(self.arch, {}).get(precision, (f"native {precision}",)))


def cpu_features(cpuinfo: str | None = None, machine: str | None = None) -> CpuFeatures:
    """This CPU's features from /proc/cpuinfo (or the text given); x86 lists them as `flags`, ARM as
    `Features`."""
    machine = (machine or platform.machine()).lower()
    arch = (
        "x86"
        if machine in ("x86_64", "amd64", "i686", "i386")
        else "arm"
        if machine.startswith(("arm", "aarch"))
        else machine
    )
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return CpuFeatures(arch, None)
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return CpuFeatures(arch, frozenset(value.split()))
    return CpuFeatures(arch, None)


def probe(precision: str, size: int = PROBE_SIZE) -> float:
    """How many times as long a `size`-square matmul takes in `precision` as in fp32 on one CPU thread (the
    best of a few tries each; tens of milliseconds in all where the precision is not native). One thread: the
    ratio is the instructions', not how busy the other cores are."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _best_time(size, DTYPES[precision]) / max(_best_time(size, torch.float32), 1e-9)
    finally:
        torch.set_num_threads(threads)


def _best_time(size: int, dtype: torch.dtype, tries: int = 3, calls: int = 5) -> float:
    a = torch.ones(size, size, dtype=dtype)
    a @ a  # the first call sets up the kernel
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        for _ in range(calls):
            a @ a
        best = min(best, time.perf_counter() - start)
    return best / calls


@dataclass(frozen=True)
class Choice:
    """The precision a run uses; `note` says why where it is not what was asked, or warns where the device has
    no instructions for it (`slow`, with the `reason` in words)."""

    precision: str
    note: str | None = None
    slow: bool = False
    reason: str = ""


def choose(asked: str, device_type: str, setting: str, features: CpuFeatures | None = None) -> Choice:
    """The precision to run `asked` ("auto", "no", "bf16" or "fp16", from the config key `setting`) with on a
    device of `device_type` ("cpu", "cuda", "xla", ...).

    `auto` is bf16 where the device runs it natively and fp32 elsewhere, decided by the device and the CPU's
    feature flags alone, so every process of a run decides alike. A low precision asked for on a CPU without
    its instructions is kept, with a warning that measures its cost."""
    if device_type == "xla" and os.environ.get("PJRT_DEVICE", "").upper() == "CPU":
        device_type = "xla-cpu"  # XLA's CPU device: a test bed, where bf16 is emulated
    if device_type != "cpu":
        if asked != "auto":
            return Choice(asked)
        fast = device_type == "xla" or (device_type == "cuda" and torch.cuda.is_bf16_supported())
        picked = "bf16" if fast else "no"
        return Choice(picked, f"{setting}=auto: {_words(picked)} on this {device_type} device")
    if asked not in ("auto", *DTYPES):
        return Choice(asked)
    features = features or cpu_features()
    low = "bf16" if asked == "auto" else asked
    if features.native(low):
        note = f"{setting}=auto: bf16, this CPU has {_found(features, low)}" if asked == "auto" else None
        return Choice(low, note)
    unknown = features.native(low) is None
    lacks = f"does not list {features.missing(low)}" if unknown else f"has no {features.missing(low)}"
    measured = f"{_article(low)} {low} matmul took {probe(low):.0f} times as long as an fp32 one here"
    reason = f"this CPU {lacks} ({measured})"
    if asked == "auto":
        return Choice("no", f"{setting}=auto: fp32, as {reason}", reason=reason)
    return Choice(
        asked,
        f"warning: {setting}={asked}, but {reason}: a training step can be slower still; {setting}=no "
        "(or auto) runs in fp32",
        slow=True,
        reason=reason,
    )


def device_type() -> str:
    """The kind of device a process launched here trains on, read from the environment before Accelerate sets
    up (creating its state early would fix the process layout too soon): "cpu" where ACCELERATE_USE_CPU asks for
    it, "xla" where PJRT_DEVICE names an XLA device (and USE_TORCH_XLA does not turn it off), "cuda" where a GPU
    is visible, else "cpu"."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    if os.environ.get("PJRT_DEVICE") and os.environ.get("USE_TORCH_XLA", "1").lower() not in ("0", "false", "no"):
        return "xla"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _found(features: CpuFeatures, precision: str) -> str:
    flags = features.flags or frozenset()
    return " and ".join(f for f in NATIVE_FEATURES[features.arch][precision] if f in flags)


def _words(precision: str) -> str:
    return "fp32" if precision == "no" else precision


def _article(precision: str) -> str:
    return "an" if precision == "fp16" else "a"
