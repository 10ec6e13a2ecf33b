"""Assemble an evidence pack in a work directory and rename it into place (DESIGN §5).

A pack is whole or absent: every file, the manifest last, is written under ``<store>/.tmp/``
and the directory appears under ``<store>/packs/`` by one ``rename``. Then, still under the packs
lock, ``<pack>.zip`` is written beside the directory and ``packs/index.html`` is rewritten
(both atomically: a temporary file renamed over the old one).

Order of writing, so that each file can state what it must:
1. the data files (results.json, exceptions.csv, samples.csv, populations/*.csv,
   workbook.xlsx) and their digest;
2. report.html and report.pdf, which print the pack id and that digest (the PDF is then
   PAdES-signed when configured);
3. tsa-ca.pem (when timestamping), manifest.json (hashes of all of the above), manifest.sig
   (Ed25519), manifest.tsr (RFC 3161).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from collector.results import Evidence
from collector.store import SnapshotStore, publish, write_json

from . import signing, timestamp
from .html import PackContext, draw_samples, render_report
from .index import write_index, write_zip
from .manifest import MANIFEST, annex_digest, build_manifest, previous_pack
from .options import PackOptions, parse_options
from .pdf import render_pdf
from .pdfsign import load_signer, sign_pdf
from .results_json import write_results
from .tables import EXCEPTION_COLUMNS, write_exceptions, write_frame, write_rows
from .workbook import sheet_title, write_workbook

log = logging.getLogger(__name__)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SAMPLE_COLUMNS = ("population", "row", "draw", "sample_size", "population_size", "seed",
                  "size_from")


def _file_name(name: str, what: str) -> str:
    if not _SAFE_NAME.match(name):  # no "/", no leading dot: stays one path component
        raise ValueError(f"{what} {name!r} cannot be used as a file name")
    return name


def _populations(evidence: Evidence) -> dict[str, pd.DataFrame]:
    """Every population by its file name, checked: one path component each, no duplicates."""
    out: dict[str, pd.DataFrame] = {}

    def add(name: str, df: pd.DataFrame, what: str) -> None:
        name = _file_name(name, what)
        if name in out:
            raise ValueError(f"two populations would both be written to populations/{name}.csv")
        out[name] = df

    for c in evidence.controls:
        add(c.id, c.population, "control id")
        if c.excluded is not None and len(c.excluded):
            add(f"{c.id}-excluded", c.excluded, "control id")
    for name, df in evidence.extra_populations.items():
        add(name, df, "population name")
    return out


def _write_populations(populations: dict[str, pd.DataFrame], out: Path) -> None:
    out.mkdir()
    for name, df in populations.items():
        write_frame(out / f"{name}.csv", df)


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
        if final.exists() or final.with_name(final.name + ".zip").exists():
            continue
        try:
            return publish(work, final)
        except OSError as exc:  # appeared between exists() and rename()
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise RuntimeError(f"no free pack directory name under {parent} for {stamp}")


def _sample_rows(context: PackContext) -> list[list[Any]]:
    rows = []
    for name, smp in context.samples.items():
        for draw, row in enumerate(smp.rows, 1):
            rows.append([name, row, draw, smp.size, smp.population, smp.seed, smp.basis])
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def _about(evidence: Evidence, context: PackContext) -> list[tuple[str, Any]]:
    period = evidence.period
    options = context.options
    return [
        ("Evidence pack", "SOC 2 CC6.2 access provisioning and deprovisioning evidence"),
        ("Entity", options.entity or "—"),
        ("Period", f"{period.label}: {period.start:%Y-%m-%d %H:%M} UTC up to, not including, "
                   f"{period.end:%Y-%m-%d %H:%M} UTC"),
        ("Pack id", context.pack_id),
        ("Generated at (UTC)", pd.Timestamp(evidence.generated_at)),
        ("Tool version", f"accessproof {evidence.tool_version}"),
        ("Overall status", evidence.status),
        ("Times", "All date-times are UTC. Excel has no time zones, so they are stored as UTC "
                  "date-times without one; their column headers say (UTC)."),
        ("Formulas", "There are none: text that starts like a formula (= + - @ tab CR) is "
                     "stored as text with a quote prefix."),
        ("Sample seed", next(iter(context.samples.values())).seed if context.samples else "—"),
    ]


def _exception_table(evidence: Evidence) -> tuple[list[str], list[list[Any]]]:
    time_columns = {"terminated_at", "disabled_at"}
    columns = [c + " (UTC)" if c in time_columns else c for c in EXCEPTION_COLUMNS]
    rows = [[getattr(f, c) for c in EXCEPTION_COLUMNS] for f in evidence.exceptions]
    return columns, rows


def _context(evidence: Evidence, options: PackOptions, pack_id: str,
             populations: dict[str, pd.DataFrame]) -> PackContext:
    seed = options.sample_seed or pack_id
    taken = {"about", "exceptions", "samples"}
    sheets = {name: sheet_title(name, taken) for name in populations}
    return PackContext(pack_id=pack_id, options=options,
                       samples=draw_samples(evidence, options, seed), sheets=sheets,
                       timestamp_url=options.timestamp_url)


def write_pack(evidence: Evidence, store_root: Path, *,
               options: dict[str, Any] | PackOptions | None = None) -> Path:
    """Write the evidence pack of ``evidence`` under ``store_root``; returns its directory.

    ``options`` is the ``[pack]`` section of the configuration (``Config.pack``); see
    ``reports.options`` for its keys. Without it: no signatures, no timestamp, default samples.
    """
    options = parse_options(options)
    store_root = Path(store_root)
    label = _file_name(evidence.period.label, "period label")
    stamp = pd.Timestamp(evidence.generated_at).tz_convert("UTC").strftime("%Y%m%dT%H%M%SZ")
    packs = store_root / "packs"
    populations = _populations(evidence)

    # secrets and outside material first: a bad key fails before anything is rendered
    manifest_key = (signing.load_private_key(options.signing_key_pem(),
                                             options.signing_passphrase())
                    if options.signing_key is not None else None)
    pdf_signer = (load_signer(options.pdf_key_pem(), options.pdf_signing_certificate,
                              options.pdf_passphrase())
                  if options.pdf_signing_key is not None else None)
    tsa_ca = None
    if options.timestamp_url:
        try:
            tsa_ca = timestamp.read_bundle(options.timestamp_ca_bundle)
            timestamp.load_roots(tsa_ca, "timestamp_ca_bundle")
        except (OSError, ValueError) as exc:
            from collector.errors import ConfigError
            raise ConfigError(str(exc), section="pack", key="timestamp_ca_bundle") from None

    pack_id = str(uuid.uuid4())
    context = _context(evidence, options, pack_id, populations)
    if manifest_key is not None:
        context.signing_key_sha256 = signing.fingerprint(manifest_key.public_key())
    if pdf_signer is not None:
        context.pdf_signer = (pdf_signer.subject, pdf_signer.certificate_sha256)

    work = SnapshotStore(store_root).work_dir("pack")
    try:
        # 1. data files
        write_results(work / "results.json", evidence)
        write_exceptions(work / "exceptions.csv", evidence.exceptions)
        write_rows(work / "samples.csv", SAMPLE_COLUMNS, _sample_rows(context))
        _write_populations(populations, work / "populations")
        exc_columns, exc_rows = _exception_table(evidence)
        write_workbook(
            work / "workbook.xlsx", title=f"CC6.2 evidence {evidence.period.label}",
            about=_about(evidence, context),
            populations={name: (context.sheets[name], df) for name, df in populations.items()},
            exception_columns=exc_columns, exception_rows=exc_rows,
            sample_columns=list(SAMPLE_COLUMNS), sample_rows=_sample_rows(context))
        context.annex_sha256, context.annex_files = annex_digest(work)

        # 2. the report
        (work / "report.html").write_text(render_report(evidence, target="html",
                                                        context=context), encoding="utf-8")
        pdf = render_pdf(render_report(evidence, target="pdf", context=context))
        if pdf_signer is not None:
            pdf = sign_pdf(pdf, pdf_signer,
                           reason=f"SOC 2 CC6.2 evidence pack {evidence.period.label}, "
                                  f"pack {pack_id}",
                           location=options.entity)
        (work / "report.pdf").write_bytes(pdf)
        if tsa_ca is not None:
            (work / timestamp.CA_FILE).write_bytes(tsa_ca)

        # 3. the manifest and what vouches for it
        integrity: dict[str, Any] = {}
        if manifest_key is not None:
            integrity["signature"] = signing.declaration(manifest_key)
        if options.timestamp_url:
            integrity["timestamp"] = {"file": timestamp.TOKEN_FILE, "hash": "sha256",
                                      "authority": options.timestamp_url,
                                      "ca_file": timestamp.CA_FILE}
        if pdf_signer is not None:
            integrity["pdf_signature"] = {"file": "report.pdf", "format": "PAdES B-B",
                                          "certificate_sha256": pdf_signer.certificate_sha256,
                                          "subject": pdf_signer.subject}
        with _packs_lock(packs):
            manifest = build_manifest(evidence, work, previous_pack(store_root),
                                      pack_id=pack_id, annex_sha256=context.annex_sha256,
                                      integrity=integrity)
            manifest_bytes = write_json(work / MANIFEST, manifest)
            if manifest_key is not None:
                _write_file(work / signing.SIGNATURE_FILE,
                            signing.sign(manifest_bytes, manifest_key))
            if options.timestamp_url:
                token = timestamp.request_timestamp(manifest_bytes, options.timestamp_url,
                                                    tsa_ca, options.timestamp_timeout)
                _write_file(work / timestamp.TOKEN_FILE, token)
            _fsync_tree(work)
            final = _publish(work, packs / label, stamp)
            _after_publish(final, store_root, options)
            return final
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _after_publish(final: Path, store_root: Path, options: PackOptions) -> None:
    """The zip and the index; the pack is published, so a failure here is logged, not raised
    (``write_index`` repairs both on the next pack)."""
    try:
        if options.zip:
            write_zip(final)
        if options.index:
            write_index(store_root, make_zips=options.zip)
    except Exception as exc:  # noqa: BLE001 - the pack itself is whole and published
        log.error("pack %s written, but its zip or the pack index failed: %s", final, exc)
