"""Stopping on request: SIGTERM (a preempted VM, a scheduler), SIGINT (Ctrl-C) or SIGUSR1 (some schedulers'
warning) ends training at the next optimizer-step boundary with a complete checkpoint; with several
processes, at the next logging step (`train.log_every`).

The first signal only sets a flag. Every process learns whether any of them got one at the same step, so one
that was signalled later never leaves the others waiting in a collective. That agreement is an all-reduce
read on the host, so it is taken at the logging steps, which sync anyway, and no train step waits for it.

A second SIGINT or SIGTERM stops at once, with the signal's default action; checkpoints are built aside and
renamed, so that corrupts nothing.
The command then exits with 128 + the signal number (143 for SIGTERM, 130 for Ctrl-C), as a process killed
by that signal would: schedulers and retry loops treat the run as interrupted, not finished.
"""

from __future__ import annotations

import signal
import sys
import threading

import torch
from accelerate import Accelerator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """The stop signals while training runs (a context manager): `signum` is the first one received, or 0."""

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        # Python delivers signals to the main thread only; a run started from another thread keeps the
        # process's own handling.
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._received)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _received(self, signum: int, frame) -> None:
        if self.signum and signum != signal.SIGUSR1:
            self.__exit__()
            signal.raise_signal(signum)  # the second one: its default action, now
            return
        self.signum = self.signum or signum
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
            "(Ctrl-C again stops at once)",
            file=sys.stderr,
            flush=True,
        )

    def agreed(self, accelerator: Accelerator, check: bool = True) -> int:
        """The signal to stop on, the same on every process (0: go on). With several processes this is a
        collective, so every process calls it at the same steps; `check=False` skips it (returns 0)."""
        if accelerator.num_processes == 1:
            return self.signum
        if not check:
            return 0
        flag = torch.tensor(self.signum, device=accelerator.device)
        return int(accelerator.reduce(flag, "max").item())
