"""Assemble an evidence pack in a work directory and rename it into place (DESIGN §5).

A pack is whole or absent: every file, the manifest last, is written under ``<store>/.tmp/``
and the directory appears under ``<store>/packs/`` by one ``rename``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from collector.results import Evidence
from collector.store import SnapshotStore, publish, write_json

from .html import render_report
from .manifest import MANIFEST, build_manifest, previous_pack
from .pdf import render_pdf
from .results_json import write_results
from .tables import write_exceptions, write_frame

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _file_name(name: str, what: str) -> str:
    if not _SAFE_NAME.match(name):  # no "/", no leading dot: stays one path component
        raise ValueError(f"{what} {name!r} cannot be used as a file name")
    return name


def _write_populations(evidence: Evidence, out: Path) -> None:
    out.mkdir()
    names: set[str] = set()

    def write(name: str, df: pd.DataFrame, what: str) -> None:
        name = _file_name(name, what)
        if name in names:
            raise ValueError(f"two populations would both be written to populations/{name}.csv")
        names.add(name)
        write_frame(out / f"{name}.csv", df)

    for c in evidence.controls:
        write(c.id, c.population, "control id")
        if c.excluded is not None and len(c.excluded):
            write(f"{c.id}-excluded", c.excluded, "control id")
    for name, df in evidence.extra_populations.items():
        write(name, df, "population name")


@contextmanager
def _packs_lock(packs: Path):
    """Serialise choosing the previous pack and publishing, so the chain stays a line."""
    packs.mkdir(parents=True, exist_ok=True)
    fd = os.open(packs, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file before the rename, so a published pack is whole after a crash too."""
    for path in root.rglob("*"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(work: Path, parent: Path, stamp: str) -> Path:
    """Rename into ``parent/stamp``, or ``stamp-1``, ``stamp-2``... if that second is taken."""
    for n in range(1000):
        final = parent / (stamp if n == 0 else f"{stamp}-{n}")
        if final.exists():
            continue
        try:
            return publish(work, final)
        except OSError as exc:  # appeared between exists() and rename()
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise RuntimeError(f"no free pack directory name under {parent} for {stamp}")


def write_pack(evidence: Evidence, store_root: Path) -> Path:
    """Write the evidence pack of ``evidence`` under ``store_root``; returns its directory."""
    store_root = Path(store_root)
    label = _file_name(evidence.period.label, "period label")
    stamp = pd.Timestamp(evidence.generated_at).tz_convert("UTC").strftime("%Y%m%dT%H%M%SZ")
    packs = store_root / "packs"
    work = SnapshotStore(store_root).work_dir("pack")
    try:
        html = render_report(evidence)
        (work / "report.html").write_text(html, encoding="utf-8")
        (work / "report.pdf").write_bytes(render_pdf(html))
        write_results(work / "results.json", evidence)
        write_exceptions(work / "exceptions.csv", evidence.exceptions)
        _write_populations(evidence, work / "populations")
        _fsync_tree(work)
        with _packs_lock(packs):
            manifest = build_manifest(evidence, work, previous_pack(store_root))
            write_json(work / MANIFEST, manifest)
            return _publish(work, packs / label, stamp)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
