"""Several drivers on one study: who is alive, a lock for the few steps that must not interleave,
and heartbeats for the trials a driver has in flight.

- Each driver names itself `host:pid:start` (`driver_id()`) and stores that on every trial it asks
  (trial record field `driver`); only that driver tells the trial.
- While a trial is in flight its driver records Optuna's RDB heartbeat for it (table
  `trial_heartbeats`, `RDBStorage.record_heartbeat`) every `interval` seconds from a thread, so a
  driver busy rendering in-process still beats.
- A RUNNING trial is stale, and may be recovered by another driver, when its heartbeat is older than
  the grace period (Optuna's own rule, `RDBStorage(heartbeat_interval=, grace_period=)`), when it
  never beat and started longer than the grace period ago, or at once when its driver ran on this
  host and that process is gone (a rerun after kill -9 need not wait).
- `StudyLock` serialises study set-up (create, attrs, baselines), the budget check with `ask`, and
  recovery of stale trials across processes and hosts: `flock` on `<study.db>.lock` for SQLite (one
  host by nature), `pg_advisory_lock` for PostgreSQL. Both are released by the operating system or
  the server when the holder dies, so a killed driver never leaves the study locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

DEFAULT_INTERVAL = 5  # seconds between heartbeats (Optuna's heartbeat_interval)
DEFAULT_GRACE = 30  # seconds without a heartbeat before another driver recovers a trial


def _start_time(pid: int) -> int | None:
    try:
        import psutil

        return int(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - no such process (or no access): unknown
        return None


_ME: str | None = None


def this_host() -> str:
    """The host name drivers are told apart by; MERGESEARCH_HOST overrides it (containers that share
    a host name; tests that play a driver on another host)."""
    return os.environ.get("MERGESEARCH_HOST") or socket.gethostname()


def driver_id() -> str:
    """This process as a driver: host:pid:start time (pid reuse cannot make a dead driver look alive)."""
    global _ME
    if _ME is None or _ME.split(":")[1] != str(os.getpid()):  # recomputed after a fork
        _ME = f"{this_host()}:{os.getpid()}:{_start_time(os.getpid()) or 0}"
    return _ME


def driver_alive(driver: str | None) -> bool | None:
    """True/False for a driver on this host; None when it cannot be told from here (another host, unknown)."""
    if not driver:
        return None
    try:
        host, pid, start = driver.rsplit(":", 2)
        pid_i, start_i = int(pid), int(start)
    except ValueError:
        return None
    if host != this_host():
        return None
    now = _start_time(pid_i)
    return now is not None and (start_i == 0 or abs(now - start_i) <= 1)


def rdb_of(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage:
    """The RDBStorage under Optuna's per-process cache (`_CachedStorage`)."""
    return getattr(storage, "_backend", storage)


def _last_heartbeats(storage: optuna.storages.RDBStorage, study_id: int) -> tuple[dict[int, datetime], datetime]:
    """{trial_id: last heartbeat} for the study's RUNNING trials, and the database's clock."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session) as session:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        rows = (session.query(models.TrialHeartbeatModel.trial_id, models.TrialHeartbeatModel.heartbeat)
                .join(models.TrialModel, models.TrialModel.trial_id == models.TrialHeartbeatModel.trial_id)
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING)
                .all())
    return {tid: hb.replace(tzinfo=None) for tid, hb in rows}, now


def stale_trials(study: optuna.Study, *, grace: float, exclude_driver: str | None = None) -> list[FrozenTrial]:
    """RUNNING trials whose driver has stopped (see the module docstring); never this driver's own."""
    from search import trial_record as record

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    beats, now = _last_heartbeats(rdb_of(study._storage), study._study_id)
    limit = timedelta(seconds=grace)
    out = []
    for t in running:
        driver = record.read(t).driver
        if exclude_driver and driver == exclude_driver:
            continue
        alive = driver_alive(driver)
        if alive is False:
            out.append(t)
            continue
        beat = beats.get(t._trial_id)
        if beat is not None:
            if now - beat > limit:
                out.append(t)
        elif alive is None and t.datetime_start is not None and datetime.now() - t.datetime_start > limit:
            out.append(t)  # never beat (an older version, or killed between ask and its first beat)
    return out


class Heartbeat:
    """Records Optuna's heartbeat for the trials this driver has in flight, every `interval` s, in a thread."""

    def __init__(self, storage: optuna.storages.RDBStorage, interval: float = DEFAULT_INTERVAL) -> None:
        self.storage, self.interval = storage, interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mergesearch-heartbeat", daemon=True)
        self.errors = 0

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def add(self, trial_id: int) -> None:
        with self._lock:
            self._ids.add(trial_id)
        self._beat([trial_id])

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def _beat(self, ids) -> None:
        for tid in ids:
            try:
                self.storage.record_heartbeat(tid)
            except Exception:  # noqa: BLE001 - a missed beat is retried next interval; the grace period covers it
                self.errors += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self._ids)
            self._beat(ids)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)


class StudyLock:
    """A cross-process, cross-host mutex for one study in one storage (see the module docstring)."""

    def __init__(self, storage_url: str, study_name: str, *, timeout: float = 300.0) -> None:
        self.url, self.study_name, self.timeout = storage_url, study_name, timeout
        parsed = make_url(storage_url)
        self.backend = parsed.get_backend_name()
        self._path = f"{parsed.database}.lock" if self.backend == "sqlite" else None
        self._key = int.from_bytes(hashlib.sha256(f"mergesearch:{study_name}".encode()).digest()[:8], "big",
                                   signed=True)
        self._engine = None
        self._depth = 0
        self._fd: int | None = None
        self._conn = None
        self._thread_lock = threading.RLock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def _acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        if self.backend == "sqlite":
            import fcntl

            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                self._fd = None  # a read-only folder: nothing to coordinate with (nobody can write there either)
                return
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self._path}: another driver held the study lock for "
                                           f"{self.timeout:.0f} s") from None
                    time.sleep(0.05)
        if self.backend == "postgresql":
            if self._engine is None:
                self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool,
                                                        connect_args={"connect_timeout": 10})
            self._conn = self._engine.connect()
            while True:
                got = self._conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
                self._conn.commit()
                if got:
                    return
                if time.monotonic() > deadline:
                    self._conn.close()
                    self._conn = None
                    raise TimeoutError(f"study {self.study_name!r}: another driver held the study lock for "
                                       f"{self.timeout:.0f} s")
                time.sleep(0.05)

    def _release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
