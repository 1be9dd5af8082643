"""A folder in torch's distributed checkpoint format (a sharded FSDP2 checkpoint's model or optimizer), read so
that nothing in it can run code or reach outside it.

torch reads such a folder's `.metadata` with plain pickle, and loads every non-tensor entry ("bytes", which
an optimizer's settings are saved as) with `torch.load(weights_only=False)`: a folder from elsewhere could run
anything. Here:
- `.metadata` is unpickled allowing only the classes the format is made of, then every entry is checked:
  its type and fields, each chunk inside its tensor, each storage file a plain `.distcp` file of the folder
  (no path out of it, no link), each stored range inside its file, no stream transforms;
- the metadata that was checked is the one used: the reader hands torch that object instead of reading the
  file again;
- a bytes entry is refused in a model folder (a model is tensors only) and elsewhere unpickled with
  `weights_only=True` first, so only plain values (numbers, strings, lists, tensors) are ever built.

`read_tensors` reads a model folder whole; `checked_loading` makes Accelerate's own FSDP resume (`dcp.load`
inside `load_state`) go through the same reader and planner.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from dia_tpu.errors import UserError

METADATA_FILE = ".metadata"
# The storage files torch writes: __<rank>_<index>.distcp.
_STORAGE_FILE = re.compile(r"__\d+_\d+\.distcp")

# What the metadata of torch's distributed checkpoint is made of; anything else in its pickle is refused.
_DCP_CLASSES = {
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "ChunkStorageMetadata",
            "BytesStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        )
    ),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _DCP_CLASSES or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a distributed checkpoint's metadata")


def checked_metadata(folder: Path, allow_bytes: bool):
    """The `.metadata` of `folder`, read without running code and checked entry by entry (see the module's
    docstring); a ValueError names the file and the entry that is refused."""
    path = folder / METADATA_FILE
    try:
        with open(path, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError, TypeError) as err:
        raise UserError(f"{path}: not a distributed checkpoint's metadata ({err})") from err
    problem = _metadata_problem(metadata, folder, allow_bytes)
    if problem is not None:
        raise UserError(f"{path}: refused, {problem}")
    return metadata


def _metadata_problem(metadata, folder: Path, allow_bytes: bool) -> str | None:
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorStorageMetadata,
    )

    if not isinstance(metadata, Metadata):
        return f"it holds a {type(metadata).__name__}, not a checkpoint's metadata"
    entries, storage = metadata.state_dict_metadata, metadata.storage_data
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        return "its entries or storage table are not tables"
    needed: set = set()
    for name, entry in entries.items():
        if not isinstance(name, str):
            return f"an entry's name is a {type(name).__name__}"
        if isinstance(entry, BytesStorageMetadata):
            if not allow_bytes:
                return f"entry {name!r} is a pickled object, not a tensor (a model's weights are tensors only)"
            needed.add(MetadataIndex(name))
        elif isinstance(entry, TensorStorageMetadata):
            if (problem := _tensor_problem(entry)) is not None:
                return f"entry {name!r}: {problem}"
            needed.update(MetadataIndex(name, chunk.offsets) for chunk in entry.chunks)
        else:
            return f"entry {name!r} is a {type(entry).__name__}"
    sizes: dict[str, int] = {}
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex) or index not in needed:
            return f"its storage table lists {index!r}, which is no entry's"
        if not isinstance(info, _StorageInfo):
            return f"the storage of {index.fqn!r} is a {type(info).__name__}"
        if (problem := _storage_problem(info, folder, sizes)) is not None:
            return f"the storage of {index.fqn!r}: {problem}"
    if missing := needed - set(storage):
        return f"entry {next(iter(missing)).fqn!r} has no storage"
    return None


def _tensor_problem(entry) -> str | None:
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorProperties

    if not isinstance(entry.properties, TensorProperties) or not isinstance(entry.properties.dtype, torch.dtype):
        return "no tensor properties"
    size = entry.size
    if not isinstance(size, torch.Size) or not isinstance(entry.chunks, list):
        return "no size or chunk list"
    for chunk in entry.chunks:
        if not isinstance(chunk, ChunkStorageMetadata):
            return f"a chunk is a {type(chunk).__name__}"
        offsets, sizes = chunk.offsets, chunk.sizes
        shaped = isinstance(offsets, torch.Size) and isinstance(sizes, torch.Size)
        if not shaped or not len(offsets) == len(sizes) == len(size):
            return f"a chunk's offsets and sizes do not match its tensor's {len(size)} dimensions"
        if any(o < 0 or n < 0 or o + n > s for o, n, s in zip(offsets, sizes, size, strict=True)):
            return f"a chunk at {tuple(offsets)!r} of {tuple(sizes)!r} lies outside its size {tuple(size)!r}"
    return None


def _storage_problem(info, folder: Path, sizes: dict[str, int]) -> str | None:
    name = info.relative_path
    if not isinstance(name, str) or not _STORAGE_FILE.fullmatch(name):
        return f"{name!r} is not a storage file of the folder (__<rank>_<n>.distcp)"
    if info.transform_descriptors:
        return f"stream transforms {list(info.transform_descriptors)!r}, which dia_tpu never writes"
    if name not in sizes:
        file = folder / name
        if file.is_symlink() or not file.is_file():
            return f"{name} is missing or a link"
        sizes[name] = file.stat().st_size
    offset, length = info.offset, info.length
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, length)):
        return f"offset {offset!r} and length {length!r} are not byte counts"
    if offset + length > sizes[name]:
        return f"bytes {offset}-{offset + length} lie past the end of {name} ({sizes[name]} bytes)"
    return None


def _checked_reader(allow_bytes: bool):
    """A `FileSystemReader` that reads and checks `.metadata` when it is made (`checked_metadata`, whose
    ValueError comes out of the constructor as it is) and hands torch that object instead of reading it again."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class CheckedReader(FileSystemReader):
        def __init__(self, path, *args, **kwargs):
            super().__init__(path, *args, **kwargs)
            self.checked = checked_metadata(Path(path), allow_bytes)

        def read_metadata(self, *args, **kwargs):
            self.checked.storage_meta = self.checked.storage_meta or StorageMeta()
            self.checked.storage_meta.load_id = self.load_id
            return self.checked

    return CheckedReader


def _weights_only_planner():
    """torch's load planner, with each bytes entry unpickled as `weights_only` first: only when that succeeds
    (plain values and tensors) is it handed on."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class WeightsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            try:
                torch.load(value, weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
                problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"entry {read_item.dest_index.fqn!r} is not plain data, refused ({problem})") from err
            value.seek(0)
            super().load_bytes(read_item, value)

    return WeightsOnlyPlanner


def read_tensors(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Fill `tensors` ({entry name: empty tensor}) from the model folder `folder`, through the checked reader."""
    import torch.distributed.checkpoint as dcp

    reader = _checked_reader(allow_bytes=False)(folder)
    with _unwrapped(folder), warnings.catch_warnings():  # torch warns that it reads in one process, as asked
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(tensors, storage_reader=reader, planner=_weights_only_planner()(), no_dist=True)


def tensor_entries(folder: Path) -> dict:
    """The checked tensor entries of a model folder, by name, with their metadata."""
    return checked_metadata(folder, allow_bytes=False).state_dict_metadata


@contextlib.contextmanager
def checked_loading(folder: Path) -> Iterator[None]:
    """Accelerate's FSDP resume, which calls `torch.distributed.checkpoint.load` with torch's own reader and
    planner, made to use the checked ones while it runs (Accelerate offers no way to pass them)."""
    import torch.distributed.checkpoint as dcp
    import torch.distributed.checkpoint.default_planner as planners

    reader, planner = dcp.FileSystemReader, planners.DefaultLoadPlanner
    dcp.FileSystemReader = _checked_reader(allow_bytes=True)
    planners.DefaultLoadPlanner = _weights_only_planner()
    try:
        with _unwrapped(folder):
            yield
    finally:
        dcp.FileSystemReader, planners.DefaultLoadPlanner = reader, planner


@contextlib.contextmanager
def _unwrapped(folder: Path) -> Iterator[None]:
    """torch wraps every failure inside a load in a CheckpointException (a BaseException whose text is a
    traceback): the first failure comes out as it was raised, a ValueError for what the checks refuse."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as err:
        failure = next(iter(err.failures.values()), None)
        cause = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(cause, ValueError):
            raise UserError(str(cause)) from None
        raise UserError(
            f"{folder}: the sharded checkpoint cannot be read ({type(cause).__name__}: "
            f"{str(cause).strip().splitlines()[0] if str(cause).strip() else ''})"
        ) from None
