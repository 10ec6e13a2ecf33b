"""Snapshot store on a local directory (DESIGN §1, §5).

Layout::

    <store>/snapshots/<source>/<YYYYMMDDTHHMMSSffffffZ>/manifest.json
                                                      tables/<table>.parquet
                                                      raw/<request>.jsonl.gz
    <store>/packs/<period>/<YYYYMMDDTHHMMSSZ>/...
    <store>/.tmp/                      work directories, renamed into place when whole

A snapshot directory appears only by ``rename`` of a finished work directory, so a crashed run
leaves at most a stray directory under ``.tmp/`` that nothing reads. A failed collection is also
recorded (a manifest with ``status: failed`` and no tables) so that a pack knows the latest
collection of that source failed.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import IntegrityError
from .schema import SCHEMAS, conform

_ARROW_TYPES = {"str": pa.large_string(), "bool": pa.bool_(), "date": pa.date32(),
                "ts": pa.timestamp("us", tz="UTC"), "list": pa.list_(pa.large_string())}


def arrow_schema(table: str) -> pa.Schema:
    """A fixed Parquet schema per table, so that every snapshot of a table reads alike."""
    return pa.schema([(col, _ARROW_TYPES[kind]) for col, kind in SCHEMAS[table].items()])

SNAPSHOT_SCHEMA_VERSION = 1
GOOD_STATUSES = ("ok", "degraded")
STALE_TMP_SECONDS = 24 * 3600


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(ts: dt.datetime | pd.Timestamp | None) -> str | None:
    if ts is None or ts is pd.NaT:
        return None
    ts = pd.Timestamp(ts)
    if ts.tzinfo is None:
        raise ValueError("naive timestamp")
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


def parse_iso(text: str | None) -> pd.Timestamp | None:
    return None if text is None else pd.Timestamp(text).tz_convert("UTC")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path, skip: Iterable[str] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by POSIX relative path, sorted."""
    skip = set(skip)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel not in skip:
            out[rel] = sha256_file(path)
    return out


def write_json(path: Path, data: Any) -> bytes:
    payload = (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    with open(path, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    return payload


def publish(work_dir: Path, final_dir: Path) -> Path:
    """Rename a finished work directory into place (same filesystem, so atomic)."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    os.rename(work_dir, final_dir)
    fd = os.open(final_dir.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final_dir


class RawRecorder:
    """Keeps every raw API page of a collection run as gzipped JSON lines, a file per request."""

    def __init__(self, raw_dir: Path):
        self.raw_dir = raw_dir
        self.requests: dict[str, dict[str, Any]] = {}
        self._files: dict[str, gzip.GzipFile] = {}

    def page(self, request: str, body: Any, *, endpoint: str, parameters: dict | None = None,
             records: int = 0) -> None:
        """Record one page of ``request`` (a stable name such as ``cloudtrail.LookupEvents``)."""
        entry = self.requests.get(request)
        if entry is None:
            self.raw_dir.mkdir(parents=True, exist_ok=True)
            entry = self.requests[request] = {
                "endpoint": endpoint, "parameters": parameters or {}, "pages": 0, "records": 0,
                "file": f"raw/{request}.jsonl.gz"}
            # mtime=0 keeps the gzip bytes reproducible
            self._files[request] = gzip.GzipFile(self.raw_dir / f"{request}.jsonl.gz", "wb",
                                                  mtime=0)
        entry["pages"] += 1
        entry["records"] += records
        line = json.dumps({"page": entry["pages"], "received_at": iso(utc_now()), "body": body},
                          default=str, ensure_ascii=False)
        self._files[request].write(line.encode() + b"\n")

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


@dataclass
class SnapshotWriter:
    """A snapshot under construction in a work directory; ``commit`` or ``fail`` publishes it."""

    store: "SnapshotStore"
    source: str
    source_type: str
    started_at: dt.datetime
    work_dir: Path
    raw: RawRecorder = field(init=False)
    tables: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.raw = RawRecorder(self.work_dir / "raw")

    def write_table(self, table: str, df: pd.DataFrame) -> None:
        df = conform(df, table, source=self.source)
        (self.work_dir / "tables").mkdir(exist_ok=True)
        arrow = pa.Table.from_pandas(df, schema=arrow_schema(table), preserve_index=False)
        pq.write_table(arrow, self.work_dir / "tables" / f"{table}.parquet", compression="zstd")
        self.tables[table] = len(df)

    def _finish(self, status: str, *, finished_at: dt.datetime, metadata: dict) -> "Snapshot":
        self.raw.close()
        files = hash_tree(self.work_dir)
        manifest = {
            "schema_version": SNAPSHOT_SCHEMA_VERSION, "kind": "snapshot",
            "source": self.source, "type": self.source_type, "status": status,
            "tool_version": __version__,
            "started_at": iso(self.started_at), "finished_at": iso(finished_at),
            "requests": self.raw.requests,
            "tables": {name: {"file": f"tables/{name}.parquet", "records": count}
                       for name, count in self.tables.items()},
            "files": files,
            **metadata,
        }
        write_json(self.work_dir / "manifest.json", manifest)
        final = self.store.snapshot_dir(self.source, self.started_at)
        publish(self.work_dir, final)
        return Snapshot(final)

    def commit(self, *, finished_at: dt.datetime, status: str = "ok", principal: str | None,
               instances: list[str], window: tuple[dt.datetime, dt.datetime] | None,
               limitations: list[str] = (), extra: dict | None = None) -> "Snapshot":
        assert status in GOOD_STATUSES
        return self._finish(status, finished_at=finished_at, metadata={
            "principal": principal, "instances": list(instances), "error": None,
            "limitations": list(limitations),
            "window": None if window is None else {"start": iso(window[0]),
                                                   "end": iso(window[1])},
            **(extra or {})})

    def fail(self, error: str, *, finished_at: dt.datetime) -> "Snapshot":
        """Record a failed run: the raw pages fetched so far stay as evidence, tables do not."""
        shutil.rmtree(self.work_dir / "tables", ignore_errors=True)
        self.tables.clear()
        return self._finish("failed", finished_at=finished_at, metadata={
            "principal": None, "instances": [], "error": error, "limitations": [],
            "window": None})

    def abandon(self) -> None:
        self.raw.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)


class Snapshot:
    """A published snapshot; reads are checked against the manifest's hashes once."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @cached_property
    def manifest_bytes(self) -> bytes:
        return (self.path / "manifest.json").read_bytes()

    @cached_property
    def manifest(self) -> dict:
        return json.loads(self.manifest_bytes)

    @cached_property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def source(self) -> str:
        return self.manifest["source"]

    @property
    def status(self) -> str:
        return self.manifest["status"]

    @property
    def good(self) -> bool:
        return self.status in GOOD_STATUSES

    @cached_property
    def started_at(self) -> pd.Timestamp:
        return parse_iso(self.manifest["started_at"])

    @cached_property
    def finished_at(self) -> pd.Timestamp:
        return parse_iso(self.manifest["finished_at"])

    @cached_property
    def window(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        w = self.manifest.get("window")
        return None if not w else (parse_iso(w["start"]), parse_iso(w["end"]))

    def verify(self) -> list[str]:
        """Files whose hash differs from the manifest (or that are missing or extra)."""
        expected = self.manifest["files"]
        actual = hash_tree(self.path, skip={"manifest.json"})
        problems = [f"{name}: hash mismatch" for name in expected
                    if name in actual and actual[name] != expected[name]]
        problems += [f"{name}: missing" for name in expected if name not in actual]
        problems += [f"{name}: not in manifest" for name in actual if name not in expected]
        return problems

    def has_table(self, table: str) -> bool:
        return table in self.manifest.get("tables", {})

    def read_arrow(self, table: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path / "tables" / f"{table}.parquet", columns=columns)

    def read(self, table: str, columns: list[str] | None = None) -> pd.DataFrame:
        path = self.path / "tables" / f"{table}.parquet"
        df = pq.read_table(path, columns=columns).to_pandas()
        if table in ("people", "tickets") and columns is None:
            df = conform(df, table, source=self.source)  # restore calendar dates
        return df

    def __repr__(self) -> str:
        return f"Snapshot({self.source}@{self.manifest['started_at']}, {self.status})"


class SnapshotStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def tmp_dir(self) -> Path:
        return self.root / ".tmp"

    def work_dir(self, prefix: str) -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._sweep_tmp()
        path = self.tmp_dir / f"{prefix}-{uuid.uuid4().hex}"
        path.mkdir()
        return path

    def _sweep_tmp(self) -> None:
        """Remove work directories abandoned by crashed runs long ago."""
        cutoff = time.time() - STALE_TMP_SECONDS
        for path in self.tmp_dir.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                pass

    def snapshot_dir(self, source: str, started_at: dt.datetime) -> Path:
        stamp = pd.Timestamp(started_at).tz_convert("UTC").strftime("%Y%m%dT%H%M%S%fZ")
        path = self.root / "snapshots" / source / stamp
        while path.exists():  # two runs in the same microsecond: keep both
            path = path.with_name(path.name + "-1")
        return path

    def begin(self, source: str, source_type: str, started_at: dt.datetime) -> SnapshotWriter:
        return SnapshotWriter(self, source, source_type, started_at,
                              self.work_dir(f"snapshot-{source}"))

    def snapshots(self, source: str) -> list[Snapshot]:
        """Every recorded collection of ``source`` (good and failed), oldest first."""
        base = self.root / "snapshots" / source
        if not base.is_dir():
            return []
        found = [Snapshot(p) for p in sorted(base.iterdir())
                 if p.is_dir() and (p / "manifest.json").is_file()]
        return sorted(found, key=lambda s: s.started_at)

    def good_snapshots(self, source: str) -> list[Snapshot]:
        return [s for s in self.snapshots(source) if s.good]

    def latest(self, source: str) -> Snapshot | None:
        runs = self.snapshots(source)
        return runs[-1] if runs else None

    def verify_snapshots(self, snapshots: list[Snapshot]) -> None:
        for snap in snapshots:
            problems = snap.verify()
            if problems:
                raise IntegrityError(f"snapshot {snap.path} does not match its manifest: "
                                     + "; ".join(problems[:5]))
