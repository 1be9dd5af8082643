"""What torch_xla tells about compilation and device-to-host traffic; imported only on XLA devices."""

from __future__ import annotations

import torch_xla
import torch_xla.debug.metrics as met


def finish_pending() -> None:
    """Run the traced work still pending as one graph, its results left as device data for the next one. Called
    where a train step's graph always ends, so the step compiles once: at logging (before and after the window is
    read and reset), before an evaluation, and before weights are read to the host (samples, the export), which
    tensor by tensor would otherwise compute each weight by a graph of its own, compiled for it."""
    torch_xla.sync()


def counters() -> dict[str, float]:
    """Cumulative counts since the process started.

    compiles: XLA graph compilations (each new graph shape or structure costs one).
    compile_seconds: time spent compiling.
    host_syncs: scalar reads of device values (`.item()`, `bool(tensor)`, data-dependent Python control flow),
        each of which stops the lazy trace and waits for the device.
    host_transfers: tensor copies from device to host.
    """
    compile_data = met.metric_data("CompileTime")
    transfer_data = met.metric_data("TransferFromDeviceTime")
    return {
        "compiles": float(compile_data[0]) if compile_data else 0.0,
        "compile_seconds": float(compile_data[1]) / 1e9 if compile_data else 0.0,
        "host_syncs": float(met.counter_value("aten::_local_scalar_dense") or 0),
        "host_transfers": float(transfer_data[0]) if transfer_data else 0.0,
    }


class XlaWatch:
    """Compilations and device-to-host syncs on XLA; syncs are counted inside train steps only, so the ones
    that logging, evaluation and checkpointing need by design are left out."""

    def __init__(self):
        self._counters = counters
        self._origin = counters()  # compilations are counted from the start of training
        self._start: dict[str, float] = {}
        self.step_syncs = 0.0
        self.step_transfers = 0.0

    def step_begins(self) -> None:
        self._start = self._counters()

    def step_ends(self) -> None:
        now = self._counters()
        self.step_syncs += now["host_syncs"] - self._start["host_syncs"]
        self.step_transfers += now["host_transfers"] - self._start["host_transfers"]

    cut = staticmethod(finish_pending)  # for the places that hold the watch: logging and evaluation

    def metrics(self) -> dict[str, float]:
        now = self._counters()
        return {
            "xla/compiles": now["compiles"] - self._origin["compiles"],
            "xla/compile_seconds": now["compile_seconds"] - self._origin["compile_seconds"],
            "xla/train_step_host_syncs": self.step_syncs,
            "xla/train_step_host_transfers": self.step_transfers,
        }
