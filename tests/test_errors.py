"""One error contract: what a user can fix is one line and exit 1; anything else is a bug and keeps its
traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from dia_tpu.artifacts.lock import InUse
from dia_tpu.artifacts.owner import NotOurs
from dia_tpu.config import ConfigError
from dia_tpu.console import run_command
from dia_tpu.errors import UserError
from dia_tpu.hub import HubError


@pytest.mark.parametrize("error", [UserError, ConfigError, InUse, HubError, FileNotFoundError])
def test_what_a_user_can_fix_is_one_line(error, monkeypatch):
    monkeypatch.delenv("DIA_TPU_DEBUG", raising=False)

    def command():
        raise error("train.batch_size: -1 is not >= 1")

    with pytest.raises(SystemExit) as exited:
        run_command("dia-tpu train", command)
    assert exited.value.code == "dia-tpu train: error: train.batch_size: -1 is not >= 1"


@pytest.mark.parametrize("error", [ValueError, TypeError, KeyError])
def test_a_library_or_programming_error_keeps_its_traceback(error):
    """A ValueError from torch or numpy, or a zip(strict=True) that found a bug, is not the user's to fix."""

    def command():
        raise error("zip() argument 2 is shorter than argument 1")

    with pytest.raises(error):
        run_command("dia-tpu train", command)


def test_refusals_are_user_errors_and_still_value_errors():
    """Code that catches bad values goes on catching them: a UserError is a ValueError, a refused folder a
    FileExistsError."""
    assert issubclass(UserError, ValueError) and issubclass(ConfigError, UserError)
    assert issubclass(NotOurs, FileExistsError) and issubclass(NotOurs, UserError)


def test_a_command_shows_a_user_error_as_one_line(tmp_path):
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "dia_tpu",
            "generate",
            "--model",
            str(tmp_path / "nothing"),
            "--text",
            "[S1] Hi.",
            "--out",
            str(tmp_path / "x.wav"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.startswith("dia-tpu generate: error: ")
