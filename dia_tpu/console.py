"""What a command shows its user: its own lines and progress bars, and bad input as one line
(`dia-tpu CMD: error: ...`) instead of a traceback (set DIA_TPU_DEBUG=1 for the traceback). Anything else is
a bug and keeps its traceback. A run stopped by a signal exits with 128 + its number (see
`dia_tpu.training.stop`)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from dia_tpu.errors import UserError
from dia_tpu.hub import HubError


class DropNote(logging.Filter):
    """Drops a library's log records that contain `fragment`: notes that do not apply to the way dia_tpu calls
    the library (each use says why) and would only mislead."""

    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


# Bad input, named by file, key or value: dia_tpu's own `UserError`, the Hub out of reach, and the operating
# system's word on a path the user gave. A ValueError from anywhere else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    HubError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
)


class TrainingStopped(Exception):
    """Training stopped on a signal after saving `checkpoint`; the command exits with `exit_code`."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        saved = f"the checkpoint is {checkpoint}" if checkpoint is not None else "no checkpoint was written"
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; {saved}. Resume by running the "
            "same command with --resume auto"
        )


def run_command(name: str, command: Callable[[], object]) -> None:
    """Run `command` as the command `name`: bad input is one line and exit 1, a stop on a signal its message
    and 128 + the signal, a second Ctrl-C 130."""
    try:
        command()
    except TrainingStopped as stop:
        print(f"{name}: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except USER_ERRORS as err:
        if os.environ.get("DIA_TPU_DEBUG"):
            raise
        sys.exit(f"{name}: error: {err}")


def first_line(err: BaseException) -> str:
    """An exception's message in one line (its type when it has none), for errors that name what failed."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def quiet_libraries() -> None:
    """Turn off transformers' per-file bars ("Loading weights", "Writing model shards"): a command prints what
    it loaded and wrote itself, and training and prepare draw one bar each. The Hub's download bars stay (a
    first download of Dia-1.6B is 6 GB). Library users keep their own settings: only the entry points call
    this."""
    from transformers.utils import logging as hf_logging

    if hasattr(hf_logging, "set_tqdm_hook"):  # transformers 5.x releases that have it
        hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
