"""Reading configs: YAML plus dotted overrides, values checked against the schema's types.

Two readers, for two purposes:
- `load` reads a config to run with (train, prepare, plan, bench). Relative paths written in the file are
  resolved against the file's own folder, those given as overrides against the current directory, so a
  config means the same wherever it is run from; the run saves this resolved copy, with absolute paths.
  A "source" field (`model.pretrained`, `model.codec`, `data.source`) is a path when it starts with `.`,
  `/` or `~` or names something that exists there, and otherwise a Hugging Face Hub id, kept as written.
  Cross-field checks run; whether the files named exist is for the command that uses them to check.
- `read_saved` reads a config that dia_tpu wrote (a run's, a checkpoint's, an export's) to learn what the
  model is: types only, no paths resolved or checked, so a folder opens from any directory and on another
  machine.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from dia_tpu.config.checks import validate
from dia_tpu.config.schema import PATH_KIND, Config, ConfigError
from dia_tpu.config.secrets import redact_url
from dia_tpu.hub import is_hub_id


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or the defaults), apply `key.sub=value` overrides, resolve paths, validate."""
    raw = _read_yaml(path) if path is not None else {}
    if path is not None:
        _resolve_paths(raw, Config, Path(path).resolve().parent)
    problems: list[str] = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override {redact_url(item)!r} is not of the form section.key=value")
            continue
        try:
            text = redact_url(item)  # an output.mirror URL may carry credentials
            shown = repr(text if len(text) <= 80 else text[:77] + "...")
            _set_dotted(raw, key.strip(), _override_value(key.strip(), _parse(value, f"override {shown}")))
        except ConfigError as err:
            problems.append(str(err))
    # Values that fail their type are reported and left at their defaults, so the cross-field
    # checks still run and every problem comes out in one error.
    cfg = _build(Config, raw, "", problems)
    problems.extend(validate(cfg))
    _raise(problems, path)
    return cfg


def read_saved(path: str | Path) -> Config:
    """A config.yaml written by dia_tpu, as it was saved (see the module docstring)."""
    problems: list[str] = []
    cfg = _build(Config, _read_yaml(path), "", problems)
    _raise(problems, path)
    return cfg


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not readable as YAML: {err}") from err
    raw = _parse(text, str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def _parse(text: str, what: str) -> Any:
    """YAML text as data; what cannot be read (bad syntax, nesting deeper than Python's stack) is one ConfigError
    line naming `what`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: not readable as YAML: {err}".splitlines()[0]) from err
    except RecursionError as err:
        raise ConfigError(f"{what}: nested too deeply to read as a config") from err


def _raise(problems: list[str], path: str | Path | None) -> None:
    if problems:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}:\n  - " + "\n  - ".join(problems))


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[leaf] = value


def _override_value(key: str, value: Any) -> Any:
    """An override's value with its relative paths resolved against the current directory."""
    single: dict = {}
    _set_dotted(single, key, value)
    _resolve_paths(single, Config, Path.cwd())
    node = single
    for part in key.split("."):
        node = node[part]
    return node


def _resolve_paths(raw: Any, cls: type, base: Path) -> None:
    """Make the relative paths in `raw` (values for `cls`) absolute against `base`, in place."""
    if not isinstance(raw, dict):
        return  # a type problem, reported when the config is built
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        hint, value = hints[f.name], raw[f.name]
        if dataclasses.is_dataclass(hint):
            _resolve_paths(value, hint, base)
        elif (item := _dataclass_item(hint)) is not None and isinstance(value, list):
            for entry in value:
                _resolve_paths(entry, item, base)
        elif PATH_KIND in f.metadata and isinstance(value, str):
            raw[f.name] = _resolved(value, base, f.metadata[PATH_KIND])


def _resolved(value: str, base: Path, kind: str) -> str:
    if value == "auto" and kind == "path":  # train.resume's "latest checkpoint"
        return value
    if kind == "source" and is_hub_id(value, base):
        return value
    if kind == "url" and "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(f"unknown key {prefix + str(key)!r}; valid keys: {', '.join(fields)}")
    values = {}
    for name in fields:
        if name not in raw:
            continue
        hint, value, dotted = hints[name], raw[name], prefix + name
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, dotted + ".", problems)
            continue
        item = _dataclass_item(hint)
        if item is not None:
            if isinstance(value, list):
                values[name] = [_build(item, v, f"{dotted}[{i}].", problems) for i, v in enumerate(value)]
            else:
                problems.append(f"{dotted}: expected a list, got {value!r}")
            continue
        coerced = _coerce(hint, value, dotted, problems)
        if coerced is not _INVALID:
            values[name] = coerced
    return cls(**values)


_INVALID = object()


def _dataclass_item(hint: Any) -> type | None:
    """The item type of list[SomeDataclass], else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _coerce(hint: Any, value: Any, key: str, problems: list[str]) -> Any:
    """`value` as the declared type; else a problem naming `key` is added and _INVALID returned."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
    else:
        for kind in options:
            if typing.get_origin(kind) is list and isinstance(value, list):
                return _coerce_items(kind, value, key, problems)
            coerced = _scalar(kind, value)
            if coerced is not _INVALID:
                return coerced
    problems.append(f"{key}: {value!r} is not {_describe(hint)}")
    return _INVALID


def _coerce_items(hint: Any, value: list, key: str, problems: list[str]) -> Any:
    (item,) = typing.get_args(hint)
    before = len(problems)
    items = [_coerce(item, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    return _INVALID if len(problems) > before else items


def _scalar(kind: Any, value: Any) -> Any:
    if typing.get_origin(kind) is Literal:
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `no` (train.mixed_precision=no) as false: the choice was the word.
            word = "yes" if value else "no"
            return word if word in typing.get_args(kind) else _INVALID
        return value if value in typing.get_args(kind) else _INVALID
    if kind is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        # YAML 1.1 reads "3e-5" (no dot) as a string; it is still plainly a number.
        try:
            number = float(value)
        except ValueError:
            return _INVALID
        return number if math.isfinite(number) else _INVALID
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    plain = typing.get_origin(kind) or kind
    if plain in (str, bool, dict) and isinstance(value, plain):
        return value
    return _INVALID


def _describe(hint: Any) -> str:
    """The declared type in words: "one of 'no', 'bf16'", "a list of int", "float or None"."""
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) is dict:
        return "a mapping"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))
