"""The one kind of error a user can fix: input named by its file, key or value, shown as one line.

Everything dia_tpu raises because of what it was given (a config, a folder, a dataset, a checkpoint, a flag)
is a `UserError` or a subclass; the commands show it as `dia-tpu CMD: error: ...` and exit 1. Any other
exception, a ValueError from torch or numpy included, is a bug and keeps its traceback. `UserError` is a
ValueError, so code that catches bad values goes on catching these.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, in one line that names the file, key or value and what to do about it."""


class UserFileMissing(FileNotFoundError, UserError):
    """A file or folder the user named is not there."""


class UserFileInTheWay(FileExistsError, UserError):
    """Something is already where the user asked dia_tpu to write, and is not dia_tpu's to replace."""
