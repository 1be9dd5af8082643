"""Loading from the Hugging Face Hub: a failure to reach it, or a name it does not hold, becomes one line
that says what was asked for and how to use a local copy instead."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dia_tpu.errors import UserError

# What a hub repository id looks like: org/name.
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class HubError(ConnectionError, UserError):
    """A model, codec or dataset that was to come from the Hub and could not; the message is one line."""


def is_hub_id(name: str, base: Path | None = None) -> bool:
    """Whether `name` means a hub repository: shaped org/name, not written as a path (starting with `.`, `/`
    or `~`), and not an existing path (relative to `base`, default the current directory)."""
    looks_local = name.startswith((".", "/", "~"))
    return bool(HUB_ID.fullmatch(name)) and not looks_local and not ((base or Path()) / name).exists()


def transport_errors() -> tuple[type[BaseException], ...]:
    """What the HTTP client under huggingface_hub raises when the Hub cannot be reached (a refused or dropped
    connection, a timeout): `httpx2`'s, `httpx`'s or `requests`' base error, whichever its version uses. The
    Hub's own API calls (creating a repository, uploading) raise these unwrapped."""
    import importlib

    found = []
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


@contextmanager
def from_hub(what: str, name: str, local: str = "a local folder", repo_type: str = "model") -> Iterator[None]:
    """Run a load of `name` (a hub id, or a local path) for `what` (e.g. "model.pretrained"); a hub failure
    inside is raised as a HubError naming both, with how to point `what` at `local` instead.

    transformers, huggingface_hub and datasets all report a hub they cannot reach, and a repository that is
    not there, as OSError subclasses; errors about a local path are left as they are.
    """
    try:
        yield
    except HubError:
        raise
    except OSError as err:
        if not is_hub_id(name):
            raise
        raise HubError(_explain(what, name, local, repo_type, err)) from err


def _explain(what: str, name: str, local: str, repo_type: str, err: OSError) -> str:
    text = str(err)
    unreachable = ("connect", "offline", "reach", "connection", "cannot find the requested files in the local cache")
    missing = ("not a valid model identifier", "404", "does not exist", "doesn't exist")
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    download = f"`hf download {name}{kind} --local-dir DIR`"
    fix = f"download it where there is a network ({download}) and set {what} to {local} (DIR)"
    if any(word in text.lower() for word in unreachable):
        return f"{what}: {name!r} is not in the local Hugging Face cache and the Hub cannot be reached; {fix}"
    if any(words in text.lower() for words in missing):
        return f"{what}: {name!r} is neither a local path nor a repository on the Hugging Face Hub (or it is private)"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{what}: could not load {name!r} from the Hugging Face Hub ({first}); {fix}"
