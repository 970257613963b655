"""File hashes: sha256 as A1111 computes it, and the 10-character short hash it shows."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 8 << 20
# (real path, size, mtime_ns) -> sha256; hashing a 7 GB file takes tens of seconds, so do it once.
_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the whole file (cached per path, size and modification time)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(p, "rb", buffering=0) as f:
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                h.update(view[:n])
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]


def short_hash(sha256: str) -> str:
    """The short hash A1111 shows next to a model name: the first 10 hex digits of its sha256."""
    return sha256[:10]
