"""What torch_xla tells about compilation and device-to-host traffic; imported only on XLA devices."""

from __future__ import annotations

import torch_xla.debug.metrics as met


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
