"""What a command shows its user: its own lines and progress bars, and bad input as one line
(`dia-tpu CMD: error: ...`) instead of a traceback. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

from dia_tpu.hub import HubError

# Bad input, named by file, key or value.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError,
                                                HubError)  # fmt: skip


def quiet_libraries() -> None:
    """Turn off transformers' per-file bars ("Loading weights", "Writing model shards"): a command prints what
    it loaded and wrote itself, and training and prepare draw one bar each. The Hub's download bars stay (a
    first download of Dia-1.6B is 6 GB). Library users keep their own settings: only the entry points call
    this."""
    from transformers.utils import logging as hf_logging

    if hasattr(hf_logging, "set_tqdm_hook"):  # transformers 5.x releases that have it
        hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
