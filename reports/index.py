"""The pack download page ``<store>/packs/index.html`` and each pack as one ``.zip``.

``<store>/packs/<period>/<stamp>.zip`` holds the pack directory ``<stamp>/`` whole (so it unzips
to a directory ``verify`` accepts). It stands beside the directory, outside it: the manifest
hashes the pack's files, not its archive.

The index lists every pack of the store, newest first: period, generated-at, status, controls
failing, exceptions, pack id, manifest SHA-256, signatures, and links to the PDF, the HTML and
the ZIP. It is rewritten after each pack from what is on disk (so a crash between publishing a
pack and rewriting the index is repaired by the next pack), and replaced atomically: written to
a temporary file in the same directory, then renamed over the old one.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd

from collector.store import sha256_file

log = logging.getLogger(__name__)
INDEX = "index.html"
_STORED = {".pdf", ".xlsx", ".zip", ".gz", ".png"}   # already compressed


def zip_path(pack_dir: Path) -> Path:
    return pack_dir.with_name(pack_dir.name + ".zip")


def _replace_atomically(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_zip(pack_dir: Path) -> Path:
    """``<pack>.zip`` beside the pack directory, members under ``<pack name>/``."""
    pack_dir = Path(pack_dir)
    target = zip_path(pack_dir)
    files = sorted(p for p in pack_dir.rglob("*") if p.is_file())

    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for path in files:
                arc = f"{pack_dir.name}/{path.relative_to(pack_dir).as_posix()}"
                kind = zipfile.ZIP_STORED if path.suffix.lower() in _STORED \
                    else zipfile.ZIP_DEFLATED
                zf.write(path, arc, compress_type=kind)

    _replace_atomically(target, write)
    return target


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _pack_entry(store_root: Path, manifest_path: Path, make_zip: bool) -> dict[str, Any]:
    pack_dir = manifest_path.parent
    manifest = _read_json(manifest_path) or {}
    results = _read_json(pack_dir / "results.json") or {}
    controls = results.get("controls") if isinstance(results, dict) else None
    controls = controls if isinstance(controls, list) else []
    exceptions = manifest.get("exceptions")
    if not isinstance(exceptions, int):
        exceptions = sum(len(c.get("exceptions") or []) for c in controls
                         if isinstance(c, dict))
    statuses: dict[str, int] = {}
    for c in controls:
        if isinstance(c, dict):
            statuses[str(c.get("status"))] = statuses.get(str(c.get("status")), 0) + 1
    zipped = zip_path(pack_dir)
    if make_zip and not zipped.exists():
        try:
            write_zip(pack_dir)
        except OSError as exc:
            log.error("cannot write %s: %s", zipped, exc)
    period = manifest.get("period") if isinstance(manifest.get("period"), dict) else {}
    integrity = manifest.get("integrity") if isinstance(manifest.get("integrity"), dict) else {}
    rel = pack_dir.relative_to(store_root / "packs").as_posix()
    generated = manifest.get("generated_at")
    try:
        generated_text = pd.Timestamp(generated).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, TypeError):
        generated_text = str(generated or "—")
    try:     # the period is half-open: show its last day
        last_day = (pd.Timestamp(period.get("end")) - pd.Timedelta(microseconds=1)) \
            .strftime("%Y-%m-%d")
    except (ValueError, TypeError):
        last_day = ""
    return {
        "label": str(period.get("label") or pack_dir.parent.name),
        "start": str(period.get("start") or "")[:10], "end": last_day,
        "dir": rel, "generated": generated_text, "generated_raw": str(generated or ""),
        "status": str(manifest.get("status") or results.get("status") or "unknown"),
        "controls": statuses, "exceptions": exceptions,
        "pack_id": manifest.get("pack_id") or "—",
        "manifest_sha256": sha256_file(manifest_path),
        "signed": "signature" in integrity, "timestamped": "timestamp" in integrity,
        "pdf_signed": "pdf_signature" in integrity,
        "pdf": f"{rel}/report.pdf" if (pack_dir / "report.pdf").exists() else None,
        "html": f"{rel}/report.html" if (pack_dir / "report.html").exists() else None,
        "zip": f"{rel}.zip" if zipped.exists() else None,
        "zip_size": zipped.stat().st_size if zipped.exists() else None,
    }


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def write_index(store_root: Path, *, make_zips: bool = True) -> Path:
    """Rewrite ``<store>/packs/index.html`` from the packs on disk; returns its path."""
    from .html import environment, stylesheet  # noqa: F401 - shared Jinja environment
    from .manifest import MANIFEST, _STAMP, _pack_order

    store_root = Path(store_root)
    packs = store_root / "packs"
    found = [p for p in packs.glob(f"*/*/{MANIFEST}") if _STAMP.match(p.parent.name)]
    found.sort(key=_pack_order, reverse=True)
    entries = [_pack_entry(store_root, p, make_zips) for p in found]
    for e in entries:
        e["zip_size_text"] = _size(e["zip_size"])
    html = environment().get_template("index.html.j2").render(
        packs=entries, generated=pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC"))
    target = packs / INDEX
    _replace_atomically(target, lambda fh: fh.write(html.encode("utf-8")))
    return target
