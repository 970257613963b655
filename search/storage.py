"""Study storage: SQLite in WAL mode (default, one file in the run folder) or PostgreSQL via psycopg."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url


class StorageError(RuntimeError):
    """The storage URL cannot be used; the message says why and what to change."""


def _redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported as given
        return url


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise StorageError(f"storage {url!r}: an in-memory SQLite study cannot be resumed; give a file path")
    return Path(parsed.database)


def check_storage(url: str, *, timeout: float = 5.0, must_exist: bool = False) -> None:
    """Connect once, quickly, so a wrong URL fails before any worker starts."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"storage {url!r} is not a database URL ({exc}); write e.g. sqlite:///runs/NAME/study.db "
                           "or postgresql+psycopg://user@host:5432/db") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if must_exist and not path.is_file():
            raise StorageError(f"storage {url!r}: no such SQLite file {path}; is the run folder right?")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(path, timeout=timeout) as con:
                con.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the driver's writes
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"storage {url!r}: cannot open the SQLite file {path} ({exc}); "
                               "fix `storage` in the config or the folder's permissions") from None
        return
    if backend != "postgresql":
        raise StorageError(f"storage {_redacted(url)}: backend {backend!r} is not supported; use sqlite or "
                           "postgresql+psycopg")
    args = {"connect_timeout": max(1, int(timeout))}
    engine = sqlalchemy.create_engine(url, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as con:
            con.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any driver error means the same to the user
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(f"storage {_redacted(url)}: cannot connect ({reason}); start the server or fix "
                           "`storage` in the config") from None
    finally:
        engine.dispose()


def make_storage(url: str, *, must_exist: bool = False) -> optuna.storages.RDBStorage:
    check_storage(url, must_exist=must_exist)
    if make_url(url).get_backend_name() == "sqlite":
        kwargs = {"connect_args": {"timeout": 60}}
    else:  # long searches outlive idle connections: test each one before use
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    # Optuna creates its tables on first use; a second process opening the same new storage at that
    # moment (status or dashboard from another host, a test polling) makes one side see
    # "already exists". The tables are there by then, so opening again succeeds.
    for attempt in range(3):
        try:
            with _schema_lock(url):
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except sqlalchemy.exc.DBAPIError as exc:
            if attempt == 2 or not _lost_schema_race(exc):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _schema_lock(url: str):
    """SQLite: one process at a time creates the tables (flock beside the file; released if it dies)."""
    path = sqlite_path(url)
    fd = None
    if path is not None:
        try:
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a read-only folder: readers only, nothing to create
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _lost_schema_race(exc: Exception) -> bool:
    """Another process created the tables (or stamped the schema version) at the same moment:
    PostgreSQL says "already exists"/"duplicate key", SQLite "table ... already exists" or
    "UNIQUE constraint failed: alembic_version.version_num"."""
    text = str(exc).lower()
    return "already exists" in text or "duplicate key" in text or "unique constraint failed" in text
