"""What keeps a pushed repository free of the training machine: every absolute local path in the config cut to its
last component, and a check that no text file still names the export's folder."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from dia_tpu.artifacts import CONFIG_FILE
from dia_tpu.config import Config, redact_tree
from dia_tpu.config.schema import PATH_KIND
from dia_tpu.errors import UserError


def public_config(cfg: Config) -> dict:
    """The config as the repository shows it: the credentials in its URLs redacted, and every absolute local path
    (a path field's value, or a judge's `whisper:/path/to/folder`) cut to its last component; hub ids, remote URLs
    and relative paths stay. The machine's paths mean nothing elsewhere and tell where and by whom it was trained."""
    return redact_tree(_without_local_paths(cfg))


def write_public_config(out: Path, cfg: Config) -> None:
    """The run's config as the repository's config.yaml, in its public form."""
    (out / CONFIG_FILE).write_text(yaml.safe_dump(public_config(cfg), sort_keys=False), encoding="utf-8")


def local_name(value: str) -> str:
    """An absolute local path as its last component (`/home/u/runs/codes` -> `codes`); anything else as it is."""
    path = Path(value).expanduser()
    return path.name if path.is_absolute() and "://" not in value else value


# A setting that names a model by kind and folder (`eval.audio.asr: whisper:/models/whisper`): the folder is cut to
# its name like a path field's; the hub id form (`whisper:org/name`) does not match.
_KIND_AND_PATH = re.compile(r"(\w+):([/~]\S*)")


def _without_local_paths(node: Any, is_path: bool = False) -> Any:
    """`node` (the config or a part of it) as plain data with its absolute local paths cut to their names."""
    if dataclasses.is_dataclass(node):
        return {
            f.name: _without_local_paths(getattr(node, f.name), PATH_KIND in f.metadata)
            for f in dataclasses.fields(node)
        }
    if isinstance(node, list):
        return [_without_local_paths(item) for item in node]
    if isinstance(node, str) and is_path:
        return local_name(node)
    if isinstance(node, str) and (match := _KIND_AND_PATH.fullmatch(node)):
        return f"{match[1]}:{local_name(match[2])}"
    return node


# The repository's files that are text and so could name a local folder (weights and audio are not read).
TEXT_FILES = (".json", ".yaml", ".md", ".txt")


def check_no_local_paths(out: Path, source: Path) -> None:
    """Refuse a repository whose text files still name the export's folder: a library that starts writing its load
    path into a file it saves (as the processor does with its codec's) would otherwise publish it unnoticed."""
    folders = {str(source.resolve()), str(source.absolute())}
    for file in sorted(out.rglob("*")):
        if file.is_file() and file.suffix in TEXT_FILES:
            text = file.read_text(encoding="utf-8", errors="replace")
            if found := sorted(folder for folder in folders if folder in text):
                raise UserError(
                    f"{file}: names the local folder {found[0]}; it would be published with the "
                    "repository (a dia_tpu bug: please report it)"
                )
