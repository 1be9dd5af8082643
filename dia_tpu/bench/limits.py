"""What a device can do, measured in the process that is being benchmarked: the rate of one large square matmul
(the matrix units' practical peak), the time the matrix products of a recorded step take on their own at their
own shapes (what the step could shrink to if nothing else cost anything), and the memory copy bandwidth (what
bounds decoding one token at a time, which reads every weight per token)."""

from __future__ import annotations

import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# The side of the square matmul whose rate is the device's practical matmul peak.
MATMUL_SIZE = 2048
# The matrix products a recorder keeps: torch's CPU and CUDA linear layers and batched products lower to these.
_PRODUCTS = {
    torch.ops.aten.mm.default: lambda shapes: 2 * shapes[0][0] * shapes[0][1] * shapes[1][1],
    torch.ops.aten.addmm.default: lambda shapes: 2 * shapes[1][0] * shapes[1][1] * shapes[2][1],
    torch.ops.aten.bmm.default: lambda shapes: 2 * shapes[0][0] * shapes[0][1] * shapes[0][2] * shapes[1][2],
}
# Operand positions per product (addmm's first operand is the bias).
_OPERANDS = {
    torch.ops.aten.mm.default: (0, 1),
    torch.ops.aten.addmm.default: (0, 1, 2),
    torch.ops.aten.bmm.default: (0, 1),
}


def matmul_rate(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a square MATMUL_SIZE matmul in `dtype` on `device` (CPU or CUDA), on this process's threads:
    the most any of a step's matrix products can reach there."""
    n = MATMUL_SIZE
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(device, dtype) for _ in range(2))
    runs, elapsed = _repeat(lambda: a @ b, device, seconds)
    return 2 * n**3 * runs / elapsed


class MatmulRecorder(TorchDispatchMode):
    """Records the matrix products run inside it: operation, operand shapes, strides and dtype, with counts."""

    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _PRODUCTS:
            operands = tuple((tuple(args[i].shape), tuple(args[i].stride())) for i in _OPERANDS[func])
            self.seen[(func, operands, args[0].dtype, args[0].device)] += 1
        return func(*args, **(kwargs or {}))


def products_alone(recorded: Counter, seconds_each: float = 0.05) -> tuple[float, float]:
    """(seconds, FLOPs) of the recorded matrix products run on their own: each distinct one timed on random
    operands of the same shapes, strides (transposed weights stay transposed) and dtype, times its count."""
    total_seconds = total_flops = 0.0
    generator = torch.Generator().manual_seed(0)
    for (func, operands, dtype, device), count in recorded.items():
        tensors = []
        for shape, stride in operands:
            storage = sum((s - 1) * st for s, st in zip(shape, stride, strict=True)) + 1
            flat = torch.randn(storage, generator=generator).to(device, dtype)
            tensors.append(flat.as_strided(shape, stride))
        runs, elapsed = _repeat(lambda f=func, t=tensors: f(*t), device, seconds_each)
        total_seconds += count * elapsed / runs
        total_flops += count * _PRODUCTS[func]([shape for shape, _ in operands])
    return total_seconds, total_flops


def copy_bandwidth(device: torch.device, mebibytes: int = 256, seconds: float = 0.5) -> float:
    """Bytes per second that a large tensor copy moves (read plus write) on `device`."""
    source = torch.ones(mebibytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    runs, elapsed = _repeat(lambda: target.copy_(source), device, seconds)
    return 2 * source.numel() * 4 * runs / elapsed


def _repeat(work, device: torch.device, seconds: float) -> tuple[int, float]:
    """Run `work` a few times untimed, then for about `seconds`: (runs, elapsed seconds), the device waited on."""

    def wait() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        work()
    wait()
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
        work()
        runs += 1
        if runs % 8 == 0 or elapsed >= seconds:
            wait()
    wait()
    return runs, time.perf_counter() - start
