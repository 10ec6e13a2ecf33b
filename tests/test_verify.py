"""verify_pack: every hash, the chain to the previous pack and the snapshots used (DESIGN §5)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil

import pytest

from evidence_factory import make_evidence
from reports.manifest import Check, annex_sha256, verify_ok, verify_pack
from reports import pack as pack_module
from reports.pack import write_pack

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store with snapshots and two chained packs; tests work on copies of it."""
    root = tmp_path_factory.mktemp("pristine")
    ev = make_evidence(store_root=root)
    with pytest.MonkeyPatch.context() as mp:   # hashes are what matters here, not the layout
        mp.setattr(pack_module, "render_pdf", lambda html: b"%PDF-1.7 stub\n%%EOF\n")
        first = write_pack(ev, root)
        ev.generated_at = dt.datetime(2026, 4, 3, 6, 0, tzinfo=UTC)
        second = write_pack(ev, root)
    return root, first.relative_to(root), second.relative_to(root)


@pytest.fixture
def store(pristine, tmp_path):
    root, first, second = pristine
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    return copy, copy / first, copy / second


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def pack_files(pack_dir):
    return sorted(p for p in pack_dir.rglob("*") if p.is_file())


def flip_byte(path, at=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_fresh_packs_verify(store):
    _, first, second = store
    checks = by_name(verify_pack(first))
    assert verify_ok(list(checks.values())), checks
    manifest = json.loads((first / "manifest.json").read_text())
    assert checks["files"].detail == (
        f"11 files match manifest.json (pack {manifest['pack_id']}, manifest.json SHA-256 "
        f"{hashlib.sha256((first / 'manifest.json').read_bytes()).hexdigest()})")
    assert [c.name for c in checks.values()] == ["files", "chain", "snapshots", "signature",
                                                 "timestamp", "pdf-signature"]
    assert checks["signature"].detail == "not signed (no signing_key configured)"
    assert "no previous pack" in checks["chain"].detail
    assert checks["snapshots"].detail == "8 snapshot manifests match"
    checks = by_name(verify_pack(second, require_chain=True))
    assert verify_ok(list(checks.values())), checks
    assert "packs/2026-Q1/20260402T060000Z matches" in checks["chain"].detail


def test_one_changed_byte_in_any_file_fails(store):
    _, first, _ = store
    files = [p for p in pack_files(first) if p.name != "manifest.json"]
    assert len(files) == 11
    for path in files:
        original = path.read_bytes()
        flip_byte(path)
        checks = by_name(verify_pack(first))
        assert not checks["files"].ok, path
        assert path.relative_to(first).as_posix() in checks["files"].detail
        assert not verify_ok(list(checks.values()))
        path.write_bytes(original)
    assert verify_ok(verify_pack(first))


def test_changed_byte_in_manifest_fails_the_next_packs_chain(store):
    _, first, second = store
    flip_byte(first / "manifest.json", at=(first / "manifest.json").read_bytes().index(b"0.1.0"))
    checks = by_name(verify_pack(second))
    assert not checks["chain"].ok
    assert "SHA-256" in checks["chain"].detail


@pytest.mark.parametrize("stray", ["notes.txt", "populations/extra.csv", ".hidden"])
def test_stray_file_fails(store, stray):
    _, first, _ = store
    (first / stray).write_text("added later\n")
    checks = by_name(verify_pack(first))
    assert not checks["files"].ok
    assert "not listed" in checks["files"].detail


def test_missing_file_fails(store):
    _, first, _ = store
    (first / "exceptions.csv").unlink()
    checks = by_name(verify_pack(first))
    assert not checks["files"].ok and "exceptions.csv: missing" in checks["files"].detail


def test_missing_or_broken_manifest_fails(store):
    _, first, second = store
    (first / "manifest.json").unlink()
    assert not verify_ok(verify_pack(first))
    (second / "manifest.json").write_text("{not json")
    checks = verify_pack(second)
    assert not verify_ok(checks) and "JSON" in checks[0].detail


def test_rehashed_manifest_is_caught_by_the_next_pack(store):
    _, first, second = store
    target = first / "exceptions.csv"
    target.write_text(target.read_text().replace("disabled_late", "disabled_ok__"))
    manifest = json.loads((first / "manifest.json").read_text())
    manifest["files"]["exceptions.csv"] = hashlib.sha256(target.read_bytes()).hexdigest()
    manifest["annex_sha256"] = annex_sha256(manifest["files"])
    (first / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    assert verify_ok(verify_pack(first))      # a re-hashed pack is consistent on its own...
    checks = by_name(verify_pack(second))     # ...but the next pack recorded the old manifest
    assert checks["files"].ok
    assert not checks["chain"].ok
    assert "packs/2026-Q1/20260402T060000Z" in checks["chain"].detail


def test_copied_pack_verifies_without_its_chain(store, tmp_path):
    _, _, second = store
    copy = tmp_path / "elsewhere" / "a" / "b" / "pack"
    shutil.copytree(second, copy)
    checks = by_name(verify_pack(copy))
    assert verify_ok(list(checks.values())), checks
    assert "not found" in checks["chain"].detail
    assert "not found" in checks["snapshots"].detail

    strict = by_name(verify_pack(copy, require_chain=True))
    assert checks["files"].ok and strict["files"].ok
    assert not strict["chain"].ok and not strict["snapshots"].ok
    assert not verify_ok(list(strict.values()))


def test_deleted_previous_pack_is_reported(store):
    _, first, second = store
    shutil.rmtree(first)
    checks = by_name(verify_pack(second))
    assert checks["chain"].ok and "not found" in checks["chain"].detail
    assert not by_name(verify_pack(second, require_chain=True))["chain"].ok


def test_changed_snapshot_manifest_fails(store):
    root, first, _ = store
    snapshot = sorted((root / "snapshots" / "entra").iterdir())[0] / "manifest.json"
    snapshot.write_text(snapshot.read_text().replace('"ok"', '"degraded"', 1))
    checks = by_name(verify_pack(first))
    assert not checks["snapshots"].ok
    assert "snapshots/entra/" in checks["snapshots"].detail


def test_paths_outside_the_pack_or_store_are_refused(store):
    _, first, second = store
    manifest = json.loads((first / "manifest.json").read_text())
    manifest["files"]["../../../../snapshots/entra/x"] = "0" * 64
    (first / "manifest.json").write_text(json.dumps(manifest))
    assert "not a path inside the pack" in by_name(verify_pack(first))["files"].detail

    manifest = json.loads((second / "manifest.json").read_text())
    manifest["previous_pack"]["path"] = "../../etc"
    (second / "manifest.json").write_text(json.dumps(manifest))
    assert not by_name(verify_pack(second))["chain"].ok


def test_changed_data_file_without_its_digest_fails(store):
    """Re-hashing a data file in the manifest without its data-files digest (the one the report
    prints) is caught by the files check itself."""
    _, first, _ = store
    target = first / "samples.csv"
    target.write_text(target.read_text() + "orphaned-accounts,1,99,1,1,x,y\n")
    manifest = json.loads((first / "manifest.json").read_text())
    manifest["files"]["samples.csv"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (first / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    checks = by_name(verify_pack(first))
    assert not checks["files"].ok and "digest" in checks["files"].detail


def test_unexpected_signature_or_timestamp_file_fails(store):
    _, first, _ = store
    (first / "manifest.sig").write_text("{}")
    (first / "manifest.tsr").write_bytes(b"0")
    checks = by_name(verify_pack(first))
    assert checks["files"].ok
    assert not checks["signature"].ok and "declares no signature" in checks["signature"].detail
    assert not checks["timestamp"].ok


def test_verify_ok_needs_every_check():
    assert verify_ok([Check("files", True, ""), Check("chain", True, "")])
    assert not verify_ok([Check("files", True, ""), Check("chain", False, "")])
    assert not verify_ok([])
