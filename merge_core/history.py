"""The merge history: every file mergesearch writes (merge, repair, lora, export) gets a row.

One SQLite file, ``$MERGESEARCH_HISTORY`` or ``$MERGESEARCH_CACHE_DIR/history.sqlite`` (default
``~/.cache/mergesearch/history.sqlite``); ``MERGESEARCH_HISTORY=0`` turns it off. SQLite gives
what a CSV cannot: each row is appended in one transaction (all or nothing, never a torn line),
and several processes may append at once (writers wait on SQLite's lock, up to 30 s).

Public API (for every command that writes a model)::

    from merge_core.history import record
    record("lora apply", output_path, sources=[path_a, lora_path], recipe=None, details={"ratio": "0.8"})

``record`` never raises: a history that cannot be written is reported as a warning, because the
model itself was written fine. ``search(query)`` finds rows: words must all match (AND), ``OR``
between groups of words, matched case-insensitively against the command, output, sources,
hashes, method and details.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    command TEXT NOT NULL,
    output TEXT NOT NULL,
    sources TEXT NOT NULL,
    method TEXT,
    recipe TEXT,
    details TEXT NOT NULL,
    search_text TEXT NOT NULL
)
"""


class HistorySource(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    path: str
    sha256: str | None = None


class HistoryEntry(BaseModel):
    """One row: what was written, when, by which command, from which sources (with hashes)."""

    model_config = ConfigDict(frozen=True)

    id: int
    time: str  # ISO 8601, UTC
    command: str  # "merge", "repair", "lora apply", "export", ...
    output: str
    sources: tuple[HistorySource, ...]
    method: str | None = None
    recipe: dict | None = None  # the Recipe JSON when the file was made from one
    details: dict[str, str] = {}


def history_path() -> Path | None:
    """Where the history lives, or None when turned off (``MERGESEARCH_HISTORY=0``)."""
    explicit = os.environ.get("MERGESEARCH_HISTORY")
    if explicit == "0":
        return None
    if explicit:
        return Path(explicit)
    root = os.environ.get("MERGESEARCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mergesearch")
    return Path(root) / "history.sqlite"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")  # readers never block the appending writers
    con.execute(_SCHEMA)
    return con


def _source(s) -> HistorySource:
    if isinstance(s, HistorySource):
        return s
    if hasattr(s, "path") and hasattr(s, "name"):  # merge_core.Source
        return HistorySource(name=s.name, path=str(s.path), sha256=getattr(s, "sha256", None))
    p = Path(s)
    return HistorySource(name=p.stem, path=str(p.resolve()) if p.exists() else str(p))


def record(command: str, output: str | os.PathLike, *, sources: Iterable = (), recipe=None,
           details: dict[str, object] | None = None, path: str | os.PathLike | None = None,
           hash_sources: bool = True) -> int | None:
    """Append one row; returns its id, or None when the history is off or could not be written.

    ``sources``: merge_core.Source objects or paths (paths are hashed with the cached sha256 when
    ``hash_sources``); ``recipe``: a Recipe (its JSON and method are stored); ``details``: any
    short strings worth finding again (ratios, ranks, trial numbers).
    """
    target = Path(path) if path is not None else history_path()
    if target is None:
        return None
    try:
        srcs = [_source(s) for s in (recipe.sources if recipe is not None and not sources else sources)]
        if hash_sources:
            from .hashing import file_sha256

            srcs = [s if s.sha256 or not Path(s.path).is_file() else s.model_copy(update={"sha256": file_sha256(s.path)})
                    for s in srcs]
        recipe_json = recipe.model_dump(mode="json") if recipe is not None else None
        method = recipe.method if recipe is not None else None
        det = {str(k): str(v) for k, v in (details or {}).items() if v is not None and v != ""}
        out = str(Path(output).resolve())
        text = " ".join([command, out, method or "", *(f"{s.name} {s.path} {s.sha256 or ''}" for s in srcs),
                         *(f"{k}={v}" for k, v in det.items())]).lower()
        row = (datetime.now(UTC).isoformat(timespec="seconds"), command, out,
               json.dumps([s.model_dump() for s in srcs]), method,
               json.dumps(recipe_json) if recipe_json is not None else None, json.dumps(det), text)
        for attempt in range(5):  # a locked database after the 30 s timeout: back off and retry
            try:
                con = _connect(target)
                try:
                    cur = con.execute(
                        "INSERT INTO history (time, command, output, sources, method, recipe, details, search_text) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                    return int(cur.lastrowid)
                finally:
                    con.close()
            except sqlite3.OperationalError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except Exception as exc:  # the model was written; a history failure must not turn that into an error
        warnings.warn(f"merge history {target}: not recorded ({type(exc).__name__}: {exc}); "
                      "set MERGESEARCH_HISTORY to a writable file, or 0 to turn it off", stacklevel=2)
    return None


def written_recipe(path: str | os.PathLike):
    """The Recipe stored in a merged file's metadata (with the sources' sha256), or None."""
    try:
        from .checkpoint import open_checkpoint
        from .provenance import RECIPE_KEY
        from .recipe import Recipe

        text = open_checkpoint(path).metadata.get(RECIPE_KEY)
        return Recipe.from_json(text) if text else None
    except Exception:  # a file without our metadata: the caller's recipe is recorded instead
        return None


def _entry(row: Sequence) -> HistoryEntry:
    id_, time_, command, output, sources, method, recipe, details = row
    return HistoryEntry(id=id_, time=time_, command=command, output=output,
                        sources=tuple(HistorySource(**s) for s in json.loads(sources)), method=method,
                        recipe=json.loads(recipe) if recipe else None, details=json.loads(details))


def parse_query(query: str) -> list[list[str]]:
    """``"sizer ties OR colorist"`` -> [["sizer", "ties"], ["colorist"]] (OR of ANDs)."""
    groups: list[list[str]] = [[]]
    for word in query.split():
        if word.upper() == "OR":
            groups.append([])
        elif word.upper() != "AND":
            groups[-1].append(word.lower())
    return [g for g in groups if g]


def search(query: str = "", *, limit: int | None = 50, path: str | os.PathLike | None = None) -> list[HistoryEntry]:
    """Rows matching ``query`` (see :func:`parse_query`), newest first; all rows for an empty query."""
    target = Path(path) if path is not None else history_path()
    if target is None or not target.exists():
        return []
    groups = parse_query(query)
    where, args = "", []
    if groups:
        ors = []
        for g in groups:
            ors.append("(" + " AND ".join("instr(search_text, ?) > 0" for _ in g) + ")")
            args.extend(g)
        where = "WHERE " + " OR ".join(ors)
    sql = f"SELECT id, time, command, output, sources, method, recipe, details FROM history {where} ORDER BY id DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    con = _connect(target)
    try:
        return [_entry(r) for r in con.execute(sql, args).fetchall()]
    finally:
        con.close()


def get(entry_id: int, *, path: str | os.PathLike | None = None) -> HistoryEntry:
    """One row by id; KeyError naming the id when there is none."""
    target = Path(path) if path is not None else history_path()
    if target is not None and target.exists():
        con = _connect(target)
        try:
            row = con.execute("SELECT id, time, command, output, sources, method, recipe, details FROM history "
                              "WHERE id = ?", (int(entry_id),)).fetchone()
        finally:
            con.close()
        if row:
            return _entry(row)
    raise KeyError(f"no merge history entry {entry_id} in {target}; list them with `mergesearch history`")
