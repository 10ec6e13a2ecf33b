"""The pack manifest (hashes, snapshots used, chain to the previous pack) and ``verify_pack``.

A pack is identified by the SHA-256 of its ``manifest.json``. Each manifest records that hash for
the pack written before it in the same store, so a pack whose files were edited *and* whose
manifest was re-hashed to match is still caught: the next pack's chain no longer matches. When
the pack is signed, the re-hashed manifest no longer matches its Ed25519 signature either, which
catches it in the latest pack too.

Beside ``manifest.json`` (and not listed in it, since they are made from it) may stand
``manifest.sig`` (Ed25519 signature) and ``manifest.tsr`` (RFC 3161 timestamp). Whether they
must be there is written in the manifest itself (``integrity``), so removing them is caught.

``verify_pack`` returns one ``Check`` per aspect, in this order: ``files`` (every hash, no file
missing or added, the data-files digest the report prints), ``chain`` (previous pack's manifest
hash), ``snapshots`` (the snapshot manifests the evidence came from), ``signature`` (Ed25519,
key pinned or continuous with the previous pack), ``timestamp`` (RFC 3161), ``pdf-signature``
(PAdES). A check that does not apply holds and says why; the pack verifies when all hold.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from collector.results import Evidence
from collector.store import hash_tree, iso, sha256_file

from . import signing, timestamp
from .results_json import jsonable

MANIFEST = "manifest.json"
PACK_SCHEMA_VERSION = 1
# made from manifest.json after it is written: beside it, not listed in it
BESIDE_MANIFEST = frozenset({MANIFEST, signing.SIGNATURE_FILE, timestamp.TOKEN_FILE})
# the data files whose digest the report prints (everything but the report and integrity files)
ANNEX_TOP = ("results.json", "exceptions.csv", "samples.csv", "workbook.xlsx")
_STAMP = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def verify_ok(checks: list[Check]) -> bool:
    return bool(checks) and all(c.ok for c in checks)


def _pack_order(manifest: Path) -> tuple[str, int, int]:
    """Sort key of a published pack: its UTC stamp, its same-second suffix, then (for packs of
    different periods in the same second) the time its manifest was written."""
    m = _STAMP.match(manifest.parent.name)
    return m[1], int(m[2] or 0), manifest.stat().st_mtime_ns


def previous_pack(store_root: Path) -> dict[str, str] | None:
    """The most recently generated pack already in the store (any period), as a chain link."""
    found = [p for p in (store_root / "packs").glob(f"*/*/{MANIFEST}")
             if _STAMP.match(p.parent.name)]
    if not found:
        return None
    latest = max(found, key=_pack_order)
    return {"path": latest.parent.relative_to(store_root).as_posix(),
            "manifest_sha256": sha256_file(latest)}


def _is_annex(rel: str) -> bool:
    return rel in ANNEX_TOP or (rel.startswith("populations/") and rel.endswith(".csv")
                                and rel.count("/") == 1)


def annex_lines(files: dict[str, str]) -> list[tuple[str, str]]:
    return sorted((rel, digest) for rel, digest in files.items() if _is_annex(rel))


def annex_sha256(files: dict[str, str]) -> str:
    """SHA-256 of ``sha256sum``'s output for the data files, sorted by path."""
    text = "".join(f"{digest}  {rel}\n" for rel, digest in annex_lines(files))
    return hashlib.sha256(text.encode()).hexdigest()


def annex_digest(pack_dir: Path) -> tuple[str, list[tuple[str, str]]]:
    files = hash_tree(pack_dir, skip=BESIDE_MANIFEST)
    return annex_sha256(files), annex_lines(files)


def build_manifest(evidence: Evidence, pack_dir: Path, previous: dict | None, *,
                   pack_id: str | None = None, annex_sha256: str | None = None,
                   integrity: dict[str, Any] | None = None) -> dict[str, Any]:
    period = evidence.period
    files = hash_tree(pack_dir, skip=BESIDE_MANIFEST)
    return {
        "schema_version": PACK_SCHEMA_VERSION,
        "kind": "pack",
        "pack_id": pack_id,
        "tool_version": evidence.tool_version,
        "generated_at": iso(evidence.generated_at),
        "period": {"label": period.label, "start": iso(period.start), "end": iso(period.end)},
        "status": evidence.status,
        "exceptions": len(evidence.exceptions),
        "files": files,
        "annex_sha256": annex_sha256,
        "integrity": integrity or {},
        "snapshots": [
            {"source": ref.source, "path": ref.path, "manifest_sha256": ref.manifest_sha256,
             "started_at": iso(ref.started_at), "finished_at": iso(ref.finished_at),
             "status": ref.status}
            for source in evidence.sources for ref in source.snapshots],
        "previous_pack": previous,
        "config": jsonable(evidence.config_digest),
    }


# --- verify -------------------------------------------------------------------------------------

def _inside(root: Path, rel: Any) -> Path | None:
    """``root / rel`` when ``rel`` is a plain relative path that stays under ``root``."""
    if not isinstance(rel, str) or not rel:
        return None
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        return None
    return root.joinpath(*pure.parts)


def _check_files(pack_dir: Path, manifest: dict) -> Check:
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        return Check("files", False, "manifest.json lists no files")
    problems = []
    actual = hash_tree(pack_dir, skip=BESIDE_MANIFEST)
    for rel, expected in sorted(listed.items()):
        if _inside(pack_dir, rel) is None or rel in BESIDE_MANIFEST:
            problems.append(f"{rel!r}: not a path inside the pack")
        elif rel not in actual:
            problems.append(f"{rel}: missing")
        elif actual[rel] != expected:
            problems.append(f"{rel}: SHA-256 differs from manifest.json")
    problems += [f"{rel}: present but not listed in manifest.json"
                 for rel in actual if rel not in listed]
    recorded = manifest.get("annex_sha256")
    if recorded is not None and not problems and annex_sha256(listed) != recorded:
        problems.append("the data files digest (printed in the report) differs from "
                        "manifest.json's annex_sha256")
    if problems:
        return Check("files", False, "; ".join(problems))
    identity = f"manifest.json SHA-256 {sha256_file(pack_dir / MANIFEST)}"
    if manifest.get("pack_id"):
        identity = f"pack {manifest['pack_id']}, {identity}"
    return Check("files", True, f"{len(listed)} files match manifest.json ({identity})")


def _unfound(name: str, what: str, require_chain: bool) -> Check:
    if require_chain:
        return Check(name, False, f"{what} not found; required")
    return Check(name, True, f"{what} not found (pack copied out of its store?): "
                             "could not be checked")


def _check_chain(store_root: Path, manifest: dict, require_chain: bool) -> Check:
    link = manifest.get("previous_pack")
    if link is None:
        return Check("chain", True, "first pack of this store: no previous pack")
    if not isinstance(link, dict) or not isinstance(link.get("manifest_sha256"), str):
        return Check("chain", False, "previous_pack entry is malformed")
    target = _inside(store_root, link.get("path"))
    if target is None:
        return Check("chain", False, f"previous_pack path {link.get('path')!r} is not inside "
                                     "the store")
    target = target / MANIFEST
    if not target.is_file():
        return _unfound("chain", f"previous pack {link['path']}", require_chain)
    actual = sha256_file(target)
    if actual != link["manifest_sha256"]:
        return Check("chain", False, f"previous pack {link['path']}: manifest.json SHA-256 is "
                                     f"{actual}, this pack recorded {link['manifest_sha256']}")
    return Check("chain", True, f"previous pack {link['path']} matches")


def _check_snapshots(store_root: Path, manifest: dict, require_chain: bool) -> Check:
    refs = manifest.get("snapshots")
    if not isinstance(refs, list):
        return Check("snapshots", False, "manifest.json has no snapshot list")
    problems, unfound, matched = [], [], 0
    for ref in refs:
        rel = ref.get("path") if isinstance(ref, dict) else None
        target = _inside(store_root, rel)
        if target is None:
            problems.append(f"{rel!r}: not a path inside the store")
            continue
        if target.name != MANIFEST:
            target = target / MANIFEST
        if not target.is_file():
            unfound.append(rel)
        elif sha256_file(target) != ref.get("manifest_sha256"):
            problems.append(f"{rel}: manifest.json SHA-256 differs")
        else:
            matched += 1
    if problems:
        return Check("snapshots", False, "; ".join(problems))
    if unfound:
        check = _unfound("snapshots", f"{len(unfound)} of {len(refs)} snapshots", require_chain)
        return Check(check.name, check.ok, f"{check.detail} (first: {unfound[0]})")
    return Check("snapshots", True, f"{matched} snapshot manifests match")


def _previous_manifest(store_root: Path, manifest: dict) -> dict | None:
    link = manifest.get("previous_pack")
    if not isinstance(link, dict):
        return None
    target = _inside(store_root, link.get("path"))
    if target is None or not (target / MANIFEST).is_file():
        return None
    try:
        data = json.loads((target / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    if sha256_file(target / MANIFEST) != link.get("manifest_sha256"):
        return None           # the chain check reports it
    return data if isinstance(data, dict) else None


def _declared(manifest: dict, what: str) -> dict | None:
    integrity = manifest.get("integrity")
    value = integrity.get(what) if isinstance(integrity, dict) else None
    return value if isinstance(value, dict) else None


def _check_signature(pack_dir: Path, manifest: dict, manifest_bytes: bytes,
                     previous: dict | None, public_key: Any) -> Check:
    declared = _declared(manifest, "signature")
    sig_path = pack_dir / signing.SIGNATURE_FILE
    previous_key = (_declared(previous, "signature") or {}).get("public_key_sha256") \
        if previous else None
    pinned = None
    if public_key is not None:
        try:
            pinned = signing.fingerprint(signing.load_public_key(public_key))
        except (OSError, ValueError, TypeError) as exc:
            return Check("signature", False, f"the key to verify with is not readable: {exc}")
    if declared is None:
        if sig_path.exists():
            return Check("signature", False, f"{signing.SIGNATURE_FILE} is present but "
                                             "manifest.json declares no signature")
        if pinned:
            return Check("signature", False, "pack is not signed, but a signing key was given")
        if previous_key:
            return Check("signature", False, "pack is not signed, but the previous pack was "
                                             f"(key {previous_key[:16]}…): signature removed?")
        return Check("signature", True, "not signed (no signing_key configured)")
    expected = declared.get("public_key_sha256")
    if not isinstance(expected, str):
        return Check("signature", False, "manifest.json's signature entry names no key")
    if not sig_path.is_file():
        return Check("signature", False, f"{signing.SIGNATURE_FILE} is missing")
    result = signing.check(manifest_bytes, sig_path.read_bytes(), expected)
    if not result.ok:
        return Check("signature", False, result.detail)
    if pinned is not None:
        if pinned != result.fingerprint:
            return Check("signature", False, f"signed by key {result.fingerprint}, not by the "
                                             f"given key {pinned}")
        return Check("signature", True, result.detail + " (the given key)")
    if previous_key and previous_key != result.fingerprint:
        return Check("signature", False, f"signed by key {result.fingerprint[:16]}…, the "
                                         f"previous pack by {previous_key[:16]}…: key rotated or "
                                         "pack re-signed; verify with the key you trust")
    return Check("signature", True, result.detail + (
        " (the previous pack's key)" if previous_key else
        " (key not pinned: compare it with yours)"))


def _check_timestamp(pack_dir: Path, manifest: dict, manifest_bytes: bytes,
                     tsa_roots: Any) -> Check:
    declared = _declared(manifest, "timestamp")
    token_path = pack_dir / timestamp.TOKEN_FILE
    if declared is None:
        if token_path.exists():
            return Check("timestamp", False, f"{timestamp.TOKEN_FILE} is present but "
                                             "manifest.json declares no timestamp")
        return Check("timestamp", True, "no trusted timestamp (no timestamp_url configured)")
    if not token_path.is_file():
        return Check("timestamp", False, f"{timestamp.TOKEN_FILE} is missing")
    if tsa_roots is not None:
        ca = Path(tsa_roots).read_bytes() if isinstance(tsa_roots, (str, Path)) else tsa_roots
        roots_from = "the given roots"
    else:
        ca_path = pack_dir / str(declared.get("ca_file") or timestamp.CA_FILE)
        if _inside(pack_dir, declared.get("ca_file") or timestamp.CA_FILE) is None or \
                not ca_path.is_file():
            return Check("timestamp", False, "the timestamp authority's roots are missing")
        ca = ca_path.read_bytes()
        roots_from = f"{ca_path.name} in the pack"
    result = timestamp.check(manifest_bytes, token_path.read_bytes(), ca, roots_from)
    return Check("timestamp", result.ok, result.detail)


def _check_pdf_signature(pack_dir: Path, manifest: dict) -> Check:
    declared = _declared(manifest, "pdf_signature")
    if declared is None:
        return Check("pdf-signature", True, "report.pdf not signed (no pdf_signing_key "
                                            "configured)")
    pdf = pack_dir / "report.pdf"
    if not pdf.is_file():
        return Check("pdf-signature", False, "report.pdf is missing")
    from .pdfsign import check
    result = check(pdf.read_bytes(), declared.get("certificate_sha256"))
    return Check("pdf-signature", result.ok, result.detail)


def verify_pack(pack_dir: Path, *, require_chain: bool = False, public_key: Any = None,
                tsa_roots: Any = None) -> list[Check]:
    """Recompute every hash of a pack; the store root is ``pack_dir/../../..``.

    ``public_key``: the Ed25519 key the pack must be signed with (PEM file, PEM bytes, or raw
    key in base64); ``tsa_roots``: PEM roots for the timestamp instead of the pack's own.
    """
    pack_dir = Path(pack_dir)
    try:
        manifest_bytes = (pack_dir / MANIFEST).read_bytes()
        manifest = json.loads(manifest_bytes)
    except FileNotFoundError:
        return [Check("files", False, f"{pack_dir / MANIFEST} not found")]
    except (OSError, ValueError) as exc:
        return [Check("files", False, f"manifest.json is not readable JSON: {exc}")]
    if not isinstance(manifest, dict) or manifest.get("kind") != "pack":
        return [Check("files", False, "manifest.json is not a pack manifest")]
    store_root = pack_dir.resolve().parent.parent.parent
    previous = _previous_manifest(store_root, manifest)
    return [_check_files(pack_dir, manifest),
            _check_chain(store_root, manifest, require_chain),
            _check_snapshots(store_root, manifest, require_chain),
            _check_signature(pack_dir, manifest, manifest_bytes, previous, public_key),
            _check_timestamp(pack_dir, manifest, manifest_bytes, tsa_roots),
            _check_pdf_signature(pack_dir, manifest)]


def manifest_sha256(pack_dir: Path) -> str:
    """The pack's identity: SHA-256 of its manifest.json."""
    return sha256_file(Path(pack_dir) / MANIFEST)
