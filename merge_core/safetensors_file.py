"""The safetensors format: reading headers, and writing files atomically.

A safetensors file is an 8-byte little-endian header length, a JSON header
(``{key: {dtype, shape, data_offsets}}`` plus ``__metadata__``) and the raw tensor bytes.
Knowing only shapes and dtypes, the header of an output can be written before any tensor
is computed, which is what lets merges stream key by key into the final file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError, CheckpointWarning

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header: ``({key: TensorInfo}, metadata)``.

    Every offset is checked against the file size, so a truncated download is caught
    here, before anything is merged.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{path}: not a safetensors file (only {size} bytes); re-download or re-export it"
            )
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(
                f"{path}: not a safetensors file or truncated (header length {n} does not fit in "
                f"{size} bytes); re-download or re-export it"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a safetensors file (bad header: {exc}); re-export it") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):  # other tools' malformed metadata must not stop a merge
        warnings.warn(
            f"{path}: its __metadata__ is a {type(metadata).__name__}, not a JSON object; ignored",
            CheckpointWarning,
            stacklevel=2,
        )
        metadata = {}
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: key {key!r} has a malformed header entry; re-export the file"
            ) from None
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected or begin < 0:
            raise CheckpointError(
                f"{path}: key {key!r} has {end - begin} bytes for shape {shape}; the file is corrupt"
            )
        if base + end > size:
            raise CheckpointError(
                f"{path}: truncated: key {key!r} ends at byte {base + end} but the file has {size} bytes; "
                "re-download or re-copy it"
            )
        infos[key] = TensorInfo(dtype, shape, base + begin, base + end)
    return infos, {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def build_header(
    entries: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    metadata: Mapping[str, str] | None,
    *,
    size: int | None = None,
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Header bytes and each key's (start, end) in the data section, in the given order.

    The JSON is space-padded to a multiple of 8, or to exactly ``size`` bytes in all (prefix
    included) so that a header reserved before the data can be rewritten once the metadata
    is final.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for key, (dtype, shape) in entries.items():
        if dtype not in CODES:
            raise CheckpointError(f"key {key!r}: dtype {dtype} cannot be stored in safetensors")
        nbytes = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        offsets[key] = (pos, pos + nbytes)
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    if size is None:
        raw += b" " * (-(len(raw) + 8) % 8)  # keep the data section 8-byte aligned
    elif len(raw) + 8 > size:
        raise ValueError(f"header needs {len(raw) + 8} bytes but only {size} were reserved")
    else:
        raw += b" " * (size - 8 - len(raw))
    return struct.pack("<Q", len(raw)) + raw, offsets


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (no copy when it is already contiguous)."""
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


def write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[tuple[int, Path]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On any error the temporary file is removed: a failed write never leaves a partial output.
    Yields ``(fd, temp_path)``.
    """
    out = Path(path)
    if out.is_dir():
        raise CheckpointError(f"{out}: is a folder; give a file name ending in .safetensors")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: already exists; choose another name or pass --overwrite")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"{out}: folder {folder} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise CheckpointError(
            f"{out}: cannot write in {folder} ({exc.strerror}); choose a writable folder"
        ) from None
    tmp_path = Path(tmp)
    try:
        yield fd, tmp_path
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, out)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def preallocate(fd: int, size: int, out: Path) -> None:
    """Reserve the whole output up front so a full disk fails before any work, not at the end."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (95, 22):  # EOPNOTSUPP/EINVAL: the filesystem cannot preallocate; write as we go
            return
        raise CheckpointError(
            f"{out}: cannot reserve {size / 1e9:.2f} GB ({exc.strerror}); free some space"
        ) from None


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Write ``tensors`` to ``path`` as safetensors, atomically (temporary name, fsync, rename).

    Missing parent folders are created (merges, by contrast, refuse a missing output folder:
    there it is more likely a typo).
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    entries = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    header, _ = build_header(entries, metadata)
    total = len(header) + sum(math.prod(s) * d.itemsize for d, s in entries.values())
    out = Path(path)
    with atomic_output(out, overwrite=overwrite) as (fd, _tmp):
        preallocate(fd, total, out)
        write_all(fd, header)
        for t in tensors.values():
            write_all(fd, tensor_bytes(t.cpu()))
    return out


class _Flusher(threading.Thread):
    """fdatasync()s the output in the background while the merge goes on.

    The disk, not the arithmetic, bounds a merge of large files; started early, the write-back
    overlaps the computation and the final fsync has little left to do.
    """

    def __init__(self, fd: int):
        super().__init__(daemon=True, name="writeback")
        self.fd = fd
        self.wanted = threading.Event()
        self.stopping = False

    def run(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            if self.stopping:
                return
            with contextlib.suppress(OSError):
                os.fdatasync(self.fd)

    def stop(self) -> None:
        self.stopping = True
        self.wanted.set()
        self.join()


class StreamingWriter:
    """Writes a safetensors file tensor by tensor, in the order of ``entries``.

    The header's size is reserved before any data (with room for metadata that is only
    known at the end, such as source hashes or error figures) and written by ``finish``.
    Use it as a context manager: leaving it stops the background write-back thread.
    """

    FLUSH_EVERY = 256 << 20

    def __init__(
        self,
        fd: int,
        out: Path,
        entries: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
        metadata: Mapping[str, str],
        *,
        reserve: int = 1 << 16,
    ):
        self.fd = fd
        self.entries = dict(entries)
        first, self.offsets = build_header(self.entries, metadata)
        self.header_size = len(first) + reserve
        self.header_size += -self.header_size % 8
        self.total = self.header_size + sum(e - b for b, e in self.offsets.values())
        preallocate(fd, self.total, out)
        os.lseek(fd, self.header_size, os.SEEK_SET)
        self._order = iter(self.entries)
        self._key: str | None = None
        self._left = 0
        self._unflushed = 0
        self._flusher = _Flusher(fd)
        self._flusher.start()

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._flusher.is_alive():
            self._flusher.stop()

    def begin(self, key: str) -> None:
        if self._left:
            raise RuntimeError(f"{self._key}: {self._left} bytes were not written")
        expected = next(self._order)
        if key != expected:
            raise RuntimeError(f"wrote {key!r} where {expected!r} was planned")
        self._key = key
        b, e = self.offsets[key]
        self._left = e - b

    def write(self, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        if view.nbytes > self._left:
            raise RuntimeError(f"{self._key}: more bytes than its shape holds")
        write_all(self.fd, view)
        self._left -= view.nbytes
        self._unflushed += view.nbytes
        if self._unflushed >= self.FLUSH_EVERY:
            self._unflushed = 0
            self._flusher.wanted.set()

    def put(self, key: str, data: memoryview | bytes) -> None:
        self.begin(key)
        self.write(data)

    def finish(self, metadata: Mapping[str, str]) -> None:
        if self._left or next(self._order, None) is not None:
            raise RuntimeError("not every planned tensor was written")
        header, _ = build_header(self.entries, metadata, size=self.header_size)
        os.pwrite(self.fd, header, 0)
        self.close()
