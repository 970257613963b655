"""File hashes: sha256 as A1111 computes it, and the 10-character short hash it shows.

Hashing a 7 GB checkpoint takes tens of seconds, and users merge the same sources again
and again, so hashes are cached like A1111 does: in memory, and in
``$MERGESEARCH_CACHE_DIR`` (default ``~/.cache/mergesearch``) ``/sha256.json``, keyed by
real path and checked against size and modification time. ``MERGESEARCH_HASH_CACHE=0``
turns the file cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import tempfile
import threading
from pathlib import Path

_CHUNK = 64 << 20
_CACHE: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


def cache_file() -> Path | None:
    if os.environ.get("MERGESEARCH_HASH_CACHE", "1") == "0":
        return None
    root = os.environ.get("MERGESEARCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mergesearch"
    )
    return Path(root) / "sha256.json"


def _read_disk_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _lookup(key: tuple[str, int, int]) -> str | None:
    if key in _CACHE:
        return _CACHE[key]
    cf = cache_file()
    if cf is None:
        return None
    entry = _read_disk_cache(cf).get(key[0])
    if isinstance(entry, dict) and entry.get("size") == key[1] and entry.get("mtime_ns") == key[2]:
        sha = str(entry.get("sha256", ""))
        if len(sha) == 64:
            _CACHE[key] = sha
            return sha
    return None


def _store(key: tuple[str, int, int], sha: str) -> None:
    _CACHE[key] = sha
    cf = cache_file()
    if cf is None:
        return
    with _LOCK, contextlib.suppress(OSError):  # a cache that cannot be written is only a slower next run
        cf.parent.mkdir(parents=True, exist_ok=True)
        data = _read_disk_cache(cf)
        data[key[0]] = {"size": key[1], "mtime_ns": key[2], "sha256": sha}
        fd, tmp = tempfile.mkstemp(dir=cf.parent, prefix=".sha256.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=0)
        os.replace(tmp, cf)


class Pacer:
    """Keeps a hashing thread within ``window`` bytes of where a merge is reading the same file.

    A merge and a hash both read every byte of a source; paced together they share the page
    cache, so a source larger than the free memory is read from disk once, not twice.
    """

    def __init__(self, window: int = 512 << 20):
        self.window = window
        self.limit = window
        self._cond = threading.Condition()

    def advance(self, position: int) -> None:
        with self._cond:
            if position + self.window > self.limit:
                self.limit = position + self.window
                self._cond.notify_all()

    def release(self) -> None:
        """The merge is done (or failed): let the hash run to the end unpaced."""
        self.advance(1 << 62)

    def wait_for(self, position: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.limit >= position)


def file_sha256(path: str | os.PathLike, *, pacer: Pacer | None = None) -> str:
    """Hex sha256 of the whole file (cached per path, size and modification time).

    A folder (a diffusers model) hashes as the sha256 of its files' ``relative path sha256``
    lines, sorted: it changes when any weight or config file does.
    """
    p = Path(path)
    if p.is_dir():
        return folder_sha256(p)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    cached = _lookup(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(p, "rb") as f:
        if st.st_size:
            # hash straight from a read-only map: no copy into a buffer; update() releases the GIL,
            # so hashing runs beside the merge
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                for start in range(0, st.st_size, _CHUNK):
                    if pacer is not None:
                        pacer.wait_for(min(start + _CHUNK, st.st_size))
                    h.update(view[start : start + _CHUNK])
                view.release()
    sha = h.hexdigest()
    _store(key, sha)
    return sha


def folder_sha256(folder: Path) -> str:
    """sha256 over ``relative/path sha256`` lines of every file under ``folder`` (hidden files skipped)."""
    lines = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            lines.append(f"{rel.as_posix()} {file_sha256(f)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def short_hash(sha256: str) -> str:
    """The short hash A1111 shows next to a model name: the first 10 hex digits of its sha256."""
    return sha256[:10]
