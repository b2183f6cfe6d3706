"""Read single tensors, or blocks of their rows, straight from safetensors files.

Part of ``python -m lowrank.analyze`` (notebook A3, "Figure 2 for your own checkpoints").

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's
``dtype``, ``shape`` and ``data_offsets`` into the byte buffer that follows, plus optional
string ``__metadata__``) and the raw row-major bytes. So one tensor, or a block of its rows,
is one positioned read: no model class, no ``from_pretrained``, no memory map that keeps the
pages it touched resident. A checkpoint is one ``model.safetensors`` or shards listed in
``model.safetensors.index.json``; it lives in a local folder or, where the hub is reachable,
in a hub repository, of which only the files actually read are downloaded.
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: Floating-point dtypes that can be read (quantised integer weights cannot be analysed as rows).
DTYPES: dict[str, torch.dtype] = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                                  "BF16": torch.bfloat16}
_ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 * 2**20
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: file, absolute byte range, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    begin: int
    end: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (the first axis); the whole tensor for a scalar."""
        return _ITEM_SIZES[self.dtype] * math.prod(self.shape[1:])


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensors and metadata of one safetensors file, from its header alone.

    Raises ``ValueError`` for a file that is not safetensors, is truncated, or whose header
    points outside the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file: {size} bytes, shorter than its header length")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path} is truncated or not a safetensors file: header of {length} bytes in a "
                             f"{size}-byte file")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: header entry {name!r} is malformed ({entry!r})") from error
        if dtype in _ITEM_SIZES and end - begin != _ITEM_SIZES[dtype] * math.prod(shape):
            raise ValueError(f"{path}: tensor {name!r} {dtype}{list(shape)} has {end - begin} bytes")
        if not 0 <= begin <= end or start + end > size:
            raise ValueError(f"{path} is truncated: tensor {name!r} ends at byte {start + end} of {size}")
        tensors[name] = TensorInfo(name, dtype, shape, path, start + begin, start + end)
    return tensors, dict(metadata)


def read_rows(info: TensorInfo, start: int = 0, stop: int | None = None,
              handle: BinaryIO | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``start:stop`` of a tensor (all of it by default), in its stored dtype, in one read.

    ``out``, a ``uint8`` tensor of at least the bytes read, is filled and viewed instead of a new allocation.
    """
    if info.dtype not in DTYPES:
        raise ValueError(f"{info.path}: tensor {info.name!r} is stored as {info.dtype}; only floating-point "
                         f"weights ({', '.join(DTYPES)}) can be analysed (a quantised checkpoint?)")
    if sys.byteorder != "little":
        raise ValueError("safetensors files are little-endian; this machine is not")
    rows = info.shape[0] if info.shape else 1
    stop = rows if stop is None else stop
    if not 0 <= start <= stop <= rows:
        raise ValueError(f"rows {start}:{stop} out of range for {info.name!r} with {rows} rows")
    size = (stop - start) * info.row_bytes
    buffer = torch.empty(size, dtype=torch.uint8) if out is None else out.view(-1)[:size]
    own = handle is None
    stream = info.path.open("rb", buffering=0) if own else handle
    try:
        stream.seek(info.begin + start * info.row_bytes)
        view, done = memoryview(buffer.numpy()), 0
        while done < len(view):
            count = stream.readinto(view[done:])
            if not count:
                raise ValueError(f"{info.path} is truncated: tensor {info.name!r} could not be read")
            done += count
    finally:
        if own:
            stream.close()
    return buffer.view(DTYPES[info.dtype]).reshape((stop - start, *info.shape[1:]) if info.shape else ())


class Location(Protocol):
    """Where a checkpoint's files are: a local folder or a hub repository."""

    name: str

    def file(self, filename: str) -> Path | None:
        """The local path of ``filename`` (downloaded if need be), or ``None`` if there is no such file."""


@dataclass(frozen=True)
class LocalFolder:
    """A checkpoint folder on this machine."""

    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    def file(self, filename: str) -> Path | None:
        candidate = self.path / filename
        return candidate if candidate.is_file() else None


@dataclass(frozen=True)
class HubRepo:
    """A hub repository; each file is downloaded (into the hub cache) only when it is first read."""

    repo_id: str
    revision: str | None = None

    @property
    def name(self) -> str:
        return self.repo_id

    def file(self, filename: str) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(self.repo_id, filename, revision=self.revision))
        except LocalEntryNotFoundError as error:
            raise ValueError(
                f"{self.repo_id!r} is neither a local folder nor in the hub cache, and the hub cannot be reached "
                f"to fetch {filename!r} (offline, or HF_HUB_OFFLINE=1). Download it where the hub is reachable "
                "and pass the local folder, or use 'embedded' for the course's model") from error
        except EntryNotFoundError:
            return None
        except Exception as error:  # hub errors: missing/gated repository, network, bad revision
            raise ValueError(f"could not fetch {filename!r} of {self.repo_id!r} from the hub: "
                             f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error


def locate(name: str | Path) -> Location:
    """A local folder if ``name`` is one, else a hub repository id (``org/name``, optionally ``@revision``)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return LocalFolder(path)
    if path.exists():
        raise ValueError(f"{str(name)!r} is a file; give the folder that holds the checkpoint")
    text = str(name)
    repo, _, revision = text.partition("@")
    if _HUB_NAME.match(repo) and not text.startswith((".", "/", "~")):
        return HubRepo(repo, revision or None)
    raise ValueError(f"{text!r} is not an existing folder, nor a hub repository id (org/name)")


class Tensors(Protocol):
    """Named tensors of one checkpoint: names and shapes without reading, then rows on demand."""

    label: str

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor: ...

    def close(self) -> None: ...


class FileTensors:
    """Tensors of one or more safetensors files (shards), each header read only when first needed."""

    def __init__(self, location: Location, files: Mapping[str, str], label: str | None = None) -> None:
        self.location = location
        self.label = label or location.name
        self._files = dict(files)  # tensor name -> file name
        self._headers: dict[str, dict[str, TensorInfo]] = {}
        self._handles: dict[Path, BinaryIO] = {}

    @classmethod
    def single(cls, location: Location, filename: str) -> FileTensors | None:
        """The tensors of one file of ``location``, or ``None`` if it has no such file."""
        path = location.file(filename)
        if path is None:
            return None
        store = cls(location, {}, label=f"{location.name}/{filename}")
        store._headers[filename], _ = read_header(path)
        store._files = dict.fromkeys(store._headers[filename], filename)
        return store

    @classmethod
    def model(cls, location: Location) -> FileTensors | None:
        """A model checkpoint: sharded (``model.safetensors.index.json``) or one ``model.safetensors``."""
        index = location.file(INDEX_FILE)
        if index is None:
            return cls.single(location, SINGLE_FILE)
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{index} is not a safetensors index (no 'weight_map'): {error}") from error
        return cls(location, weight_map)

    def names(self) -> list[str]:
        return list(self._files)

    def info(self, name: str) -> TensorInfo:
        """Where tensor ``name`` is (reads, or downloads, its shard's header the first time)."""
        if name not in self._files:
            raise KeyError(name)
        filename = self._files[name]
        if filename not in self._headers:
            path = self.location.file(filename)
            if path is None:
                raise ValueError(f"{self.location.name}: shard {filename!r} listed in {INDEX_FILE} is missing")
            self._headers[filename], _ = read_header(path)
        header = self._headers[filename]
        if name not in header:
            raise ValueError(f"{self.location.name}: {INDEX_FILE} puts {name!r} in {filename!r}, which lacks it")
        return header[name]

    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of the first file."""
        first = next(iter(self._files.values()), None)
        path = self.location.file(first) if first else None
        return read_header(path)[1] if path else {}

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> str:
        return self.info(name).dtype

    def rows(self, name: str, start: int = 0, stop: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` (read into ``out``, a ``uint8`` buffer, if given)."""
        info = self.info(name)
        if info.path not in self._handles:
            self._handles[info.path] = info.path.open("rb", buffering=0)
        return read_rows(info, start, stop, self._handles[info.path], out)

    def close(self) -> None:
        """Close the open files (reading again reopens them)."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


class MemoryTensors:
    """Tensors already in memory, behind the same interface (the embedded backbone, a live model)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str) -> None:
        self.label = label
        self._tensors = dict(tensors)

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> str:
        return {v: k for k, v in DTYPES.items()}.get(self._tensors[name].dtype, str(self._tensors[name].dtype))

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self._tensors[name].detach()[start:stop]

    def close(self) -> None:
        pass


def bytes_of(store: FileTensors, names: Iterable[str]) -> int:
    """How many bytes the named tensors occupy on disk."""
    return sum(store.info(n).end - store.info(n).begin for n in names)
