"""Run history and the store's locks.

Every collect and pack run — from the command line or from the scheduler — is recorded in
``<store>/runs.sqlite``: start, end, status and exit code, per source its status, record counts
and snapshot, the pack written and any error. ``accessproof status`` reads it.

Two lock files keep runs from overlapping (``fcntl.flock``, released by the kernel when the
process dies, so a crash never leaves a stale lock):

- ``<store>/serve.lock``: held by ``accessproof serve`` for its whole life; a second ``serve`` on
  the same store is refused (two schedulers on one job store would duplicate every run).
- ``<store>/run.lock``: held for the duration of one collect or pack run, whoever starts it. A
  command-line run refuses to start while another run holds it (exit status 75); the service
  waits for it.

Status values: ``running``; ``ok`` (exit 0); ``exceptions`` (exit 1: controls found exceptions);
``failed`` (exit 2: a source failed); ``error`` (exit 3, or an unexpected error);
``interrupted`` (stopped by SIGTERM/SIGINT, nothing half-written published); ``abandoned`` (the
process died mid-run; found by the next run).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import __version__
from .errors import AccessproofError

RUNS_DB = "runs.sqlite"
SERVE_LOCK = "serve.lock"
RUN_LOCK = "run.lock"
SCHEMA_VERSION = 1
EXIT_BUSY = 75          # EX_TEMPFAIL: another run or service holds the store; try again later

STATUS_OF_EXIT = {0: "ok", 1: "exceptions", 2: "failed", 3: "error"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,          -- collect | pack | run (collect, then pack)
    trigger       TEXT NOT NULL,          -- cli | schedule | catch-up
    scheduled_for TEXT,                   -- the scheduled time the service ran it for
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    status        TEXT NOT NULL,
    exit_code     INTEGER,
    period        TEXT,
    pack_path     TEXT,
    pack_status   TEXT,                   -- complete | incomplete
    exceptions    INTEGER,
    error         TEXT,
    pid           INTEGER,
    host          TEXT,
    tool_version  TEXT
);
CREATE TABLE IF NOT EXISTS run_sources (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    source      TEXT NOT NULL,
    type        TEXT,
    stage       TEXT NOT NULL,            -- collect | pack
    status      TEXT NOT NULL,            -- ok | degraded | failed | missing
    error       TEXT,
    records     TEXT,                     -- JSON: table -> record count
    snapshot    TEXT,                     -- path relative to the store
    PRIMARY KEY (run_id, source, stage)
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
"""


class BusyError(AccessproofError):
    """The store is busy: another ``serve``, or another run, holds its lock."""

    exit_code = EXIT_BUSY


def utc_iso(ts: dt.datetime | None = None) -> str:
    ts = ts or dt.datetime.now(dt.timezone.utc)
    return ts.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# locks


def _holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(info: dict[str, Any]) -> str:
    if not info:
        return "another process"
    text = f"pid {info.get('pid', '?')}"
    if info.get("host"):
        text += f" on {info['host']}"
    if info.get("what"):
        text += f", {info['what']}"
    if info.get("since"):
        text += f", since {info['since']}"
    return text


class FileLock:
    """An exclusive ``flock`` on ``path``; the holder writes who it is into the file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def acquire_blocking(self) -> None:
        """Wait for the lock; a signal handler that raises interrupts the wait."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def describe(self, what: str) -> None:
        """Record the holder (pid, host, what, since) in the lock file."""
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "since": utc_iso()}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)   # closing the descriptor drops the flock
            self._fd = None

    def holder(self) -> dict[str, Any]:
        return _holder(self.path)

    def is_held(self) -> tuple[bool, dict[str, Any]]:
        """Whether another process holds the lock (probed with a shared, non-blocking lock)."""
        if not self.path.exists():
            return False, {}
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False, {}
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True, _holder(self.path)
        finally:
            os.close(fd)
        return False, {}


@contextmanager
def service_lock(store_root: Path) -> Iterator[FileLock]:
    """Held by ``serve`` for its lifetime: a second service on the same store is refused."""
    lock = FileLock(Path(store_root) / SERVE_LOCK)
    deadline = time.monotonic() + 1.0     # rides over a `status` probing the lock
    while not lock.try_acquire():
        if time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        raise BusyError(
            f"another `accessproof serve` is already running on the store {store_root} "
            f"({describe_holder(lock.holder())}); two schedulers on one store would run every "
            f"job twice. Stop it first (e.g. systemctl stop accessproof) or use another store.")
    try:
        lock.describe("accessproof serve")
        yield lock
    finally:
        lock.release()


@contextmanager
def run_lock(store_root: Path, what: str, *, wait: float | None = 1.0,
             on_wait: Callable[[dict[str, Any]], None] | None = None) -> Iterator[FileLock]:
    """One collect or pack run at a time per store.

    ``wait``: seconds to keep trying before ``BusyError`` (``None``: wait as long as it takes,
    as the service does; the wait is interruptible by a stop signal)."""
    lock = FileLock(Path(store_root) / RUN_LOCK)
    if not lock.try_acquire():
        holder = lock.holder()
        if on_wait:
            on_wait(holder)
        if wait is None:
            lock.acquire_blocking()
        else:
            deadline = time.monotonic() + wait
            while not lock.try_acquire():
                if time.monotonic() >= deadline:
                    raise BusyError(
                        f"another run is in progress on the store {store_root} "
                        f"({describe_holder(lock.holder() or holder)}); runs never overlap — "
                        "try again when it has finished")
                time.sleep(0.1)
    try:
        lock.describe(what)
        yield lock
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------
# history


@dataclass
class SourceRecord:
    source: str
    type: str | None
    stage: str
    status: str
    error: str | None = None
    records: dict[str, int] = field(default_factory=dict)
    snapshot: str | None = None


@dataclass
class RunRecord:
    id: int
    kind: str
    trigger: str
    scheduled_for: str | None
    started_at: str
    finished_at: str | None
    status: str
    exit_code: int | None
    period: str | None
    pack_path: str | None
    pack_status: str | None
    exceptions: int | None
    error: str | None
    pid: int | None
    host: str | None
    tool_version: str | None
    sources: list[SourceRecord] = field(default_factory=list)

    @property
    def duration(self) -> dt.timedelta | None:
        if not self.finished_at:
            return None
        return (dt.datetime.fromisoformat(self.finished_at.replace("Z", "+00:00"))
                - dt.datetime.fromisoformat(self.started_at.replace("Z", "+00:00")))


class RunHistory:
    """``<store>/runs.sqlite``. Writers open it read-write (creating it); ``status`` opens it
    read-only and never creates it."""

    def __init__(self, store_root: Path, *, readonly: bool = False):
        self.path = Path(store_root) / RUNS_DB
        self.readonly = readonly
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                   timeout=30)
        else:
            conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    # --- writing ------------------------------------------------------------------------------
    def begin(self, kind: str, trigger: str = "cli", *, scheduled_for: dt.datetime | None = None,
              period: str | None = None) -> int:
        with self._tx() as conn:
            # The caller holds the run lock: a run still marked running died with its process.
            conn.execute("UPDATE runs SET status = 'abandoned', finished_at = COALESCE("
                         "finished_at, ?), error = COALESCE(error, 'the process ended during "
                         "the run') WHERE status = 'running'", (utc_iso(),))
            cur = conn.execute(
                "INSERT INTO runs (kind, trigger, scheduled_for, started_at, status, period, "
                "pid, host, tool_version) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (kind, trigger, utc_iso(scheduled_for) if scheduled_for else None, utc_iso(),
                 period, os.getpid(), socket.gethostname(), __version__))
            return int(cur.lastrowid)

    def add_sources(self, run_id: int, records: list[SourceRecord]) -> None:
        with self._tx() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO run_sources (run_id, source, type, stage, status, error, "
                "records, snapshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, r.source, r.type, r.stage, r.status, r.error,
                  json.dumps(r.records, sort_keys=True), r.snapshot) for r in records])

    def finish(self, run_id: int, *, status: str, exit_code: int | None,
               error: str | None = None, period: str | None = None,
               pack_path: str | None = None, pack_status: str | None = None,
               exceptions: int | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET finished_at = ?, status = ?, exit_code = ?, error = ?, "
                "period = COALESCE(?, period), pack_path = ?, pack_status = ?, exceptions = ? "
                "WHERE id = ?",
                (utc_iso(), status, exit_code, error, period, pack_path, pack_status, exceptions,
                 run_id))

    # --- reading ------------------------------------------------------------------------------
    def recent(self, limit: int = 10) -> list[RunRecord]:
        """The latest ``limit`` runs, newest first."""
        return self._select("ORDER BY id DESC LIMIT ?", (limit,))

    def get(self, run_id: int) -> RunRecord | None:
        found = self._select("WHERE id = ?", (run_id,))
        return found[0] if found else None

    def _select(self, clause: str, params: tuple) -> list[RunRecord]:
        if self.readonly and not self.exists:
            return []
        with self._tx() as conn:
            rows = conn.execute(f"SELECT * FROM runs {clause}", params).fetchall()
            runs = [RunRecord(**{k: row[k] for k in row.keys()}) for row in rows]
            for run in runs:
                run.sources = [
                    SourceRecord(source=r["source"], type=r["type"], stage=r["stage"],
                                 status=r["status"], error=r["error"],
                                 records=json.loads(r["records"] or "{}"), snapshot=r["snapshot"])
                    for r in conn.execute("SELECT * FROM run_sources WHERE run_id = ? "
                                          "ORDER BY rowid", (run.id,))]
        return runs
