"""The pack manifest (hashes, snapshots used, chain to the previous pack) and ``verify_pack``.

A pack is identified by the SHA-256 of its ``manifest.json``. Each manifest records that hash for
the pack written before it in the same store, so a pack whose files were edited *and* whose
manifest was re-hashed to match is still caught: the next pack's chain no longer matches.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from collector.results import Evidence
from collector.store import hash_tree, iso, sha256_file

from .results_json import jsonable

MANIFEST = "manifest.json"
PACK_SCHEMA_VERSION = 1
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


def build_manifest(evidence: Evidence, pack_dir: Path, previous: dict | None) -> dict[str, Any]:
    period = evidence.period
    return {
        "schema_version": PACK_SCHEMA_VERSION,
        "kind": "pack",
        "tool_version": evidence.tool_version,
        "generated_at": iso(evidence.generated_at),
        "period": {"label": period.label, "start": iso(period.start), "end": iso(period.end)},
        "status": evidence.status,
        "files": hash_tree(pack_dir, skip={MANIFEST}),
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
    actual = hash_tree(pack_dir, skip={MANIFEST})
    for rel, expected in sorted(listed.items()):
        if _inside(pack_dir, rel) is None or rel == MANIFEST:
            problems.append(f"{rel!r}: not a path inside the pack")
        elif rel not in actual:
            problems.append(f"{rel}: missing")
        elif actual[rel] != expected:
            problems.append(f"{rel}: SHA-256 differs from manifest.json")
    problems += [f"{rel}: present but not listed in manifest.json"
                 for rel in actual if rel not in listed]
    if problems:
        return Check("files", False, "; ".join(problems))
    return Check("files", True, f"{len(listed)} files match manifest.json")


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


def verify_pack(pack_dir: Path, *, require_chain: bool = False) -> list[Check]:
    """Recompute every hash of a pack; the store root is ``pack_dir/../../..``."""
    pack_dir = Path(pack_dir)
    try:
        manifest = json.loads((pack_dir / MANIFEST).read_bytes())
    except FileNotFoundError:
        return [Check("files", False, f"{pack_dir / MANIFEST} not found")]
    except (OSError, ValueError) as exc:
        return [Check("files", False, f"manifest.json is not readable JSON: {exc}")]
    if not isinstance(manifest, dict) or manifest.get("kind") != "pack":
        return [Check("files", False, "manifest.json is not a pack manifest")]
    store_root = pack_dir.resolve().parent.parent.parent
    return [_check_files(pack_dir, manifest),
            _check_chain(store_root, manifest, require_chain),
            _check_snapshots(store_root, manifest, require_chain)]
