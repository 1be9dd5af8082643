"""The errors a command reports to its user as one line (`dia-tpu: error: ...`) instead of a traceback: bad
input named by file, key or value. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

from dia_tpu.hub import HubError

USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError,
                                                HubError)  # fmt: skip
