"""<store>/packs/index.html lists every pack with its downloads; each pack is also one .zip
beside its directory, which unzips to a pack that verifies."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import zipfile
from html import unescape

import pytest

from collector.store import sha256_file
from evidence_factory import make_evidence
from reports import pack as pack_module
from reports.index import write_index
from reports.manifest import verify_ok, verify_pack
from reports.pack import write_pack

UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(pack_module, "render_pdf", lambda html: b"%PDF-1.7 stub\n%%EOF\n")


def links(html: str) -> list[str]:
    return [unescape(h) for h in re.findall(r'href="([^"]+)"', html)]


def test_index_lists_every_pack_newest_first(tmp_path):
    q1 = write_pack(make_evidence(), tmp_path)
    q2 = write_pack(make_evidence(in_progress=True), tmp_path)
    index = (tmp_path / "packs" / "index.html").read_text()
    rows = index.split("<tbody>", 1)[1].split("<tr>")[1:]
    assert len(rows) == 2
    assert "2026-Q2" in rows[0] and "2026-Q1" in rows[1]             # newest first
    for row, pack in zip(rows, (q2, q1)):
        manifest = json.loads((pack / "manifest.json").read_text())
        assert manifest["pack_id"] in row
        assert sha256_file(pack / "manifest.json") in row
        assert "incomplete" in row and ">5<" in row                  # status, exceptions
        assert "2 fail" in row and "1 not evaluable" in row
        assert manifest["generated_at"][:10] in row
    targets = links(index)
    assert targets == ["2026-Q2/20260514T093005Z/report.pdf", "2026-Q2/20260514T093005Z/report.html",
                       "2026-Q2/20260514T093005Z.zip", "2026-Q1/20260402T060000Z/report.pdf",
                       "2026-Q1/20260402T060000Z/report.html", "2026-Q1/20260402T060000Z.zip"]
    assert all((tmp_path / "packs" / t).is_file() for t in targets)
    # self-contained: nothing to fetch, no script
    assert "<script" not in index and not re.search(r'src=|url\(|@import', index)
    assert "default-src 'none'" in unescape(index)


def test_zip_holds_the_whole_pack_and_verifies_unzipped(tmp_path):
    pack = write_pack(make_evidence(), tmp_path)
    archive = pack.with_name(pack.name + ".zip")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        assert zf.testzip() is None
        zf.extractall(tmp_path / "downloaded")
    on_disk = {f"{pack.name}/{p.relative_to(pack).as_posix()}" for p in pack.rglob("*")
               if p.is_file()}
    assert names == on_disk
    checks = verify_pack(tmp_path / "downloaded" / pack.name)
    assert verify_ok(checks), checks
    # the archive is outside the hashed directory: the pack itself still verifies
    assert verify_ok(verify_pack(pack))


def test_index_is_replaced_atomically_and_repairs_itself(tmp_path):
    first = write_pack(make_evidence(), tmp_path)
    index = tmp_path / "packs" / "index.html"
    inode = index.stat().st_ino
    # a crash after publishing a pack: its zip and the index entry never written
    first.with_name(first.name + ".zip").unlink()
    index.unlink()
    ev = make_evidence()
    ev.generated_at = dt.datetime(2026, 4, 3, 6, 0, tzinfo=UTC)
    write_pack(ev, tmp_path)
    assert first.with_name(first.name + ".zip").is_file()      # repaired
    text = index.read_text()
    assert text.count("<tr>") == 3 and index.stat().st_ino != inode
    assert not [p for p in (tmp_path / "packs").rglob(".*")]     # no temporary files left
    # rewriting by itself gives the same listing
    before = re.sub(r"Index written [^;]+;", "", text)
    after = re.sub(r"Index written [^;]+;", "", write_index(tmp_path).read_text())
    assert before == after


def test_zip_and_index_can_be_switched_off(tmp_path):
    pack = write_pack(make_evidence(), tmp_path, options={"zip": False, "index": False})
    assert not pack.with_name(pack.name + ".zip").exists()
    assert not (tmp_path / "packs" / "index.html").exists()


def test_index_escapes_what_manifests_say(tmp_path):
    pack = write_pack(make_evidence(), tmp_path)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["pack_id"] = '<img src="http://evil.example/x">'
    manifest["status"] = "<b>complete</b>"
    (pack / "manifest.json").write_text(json.dumps(manifest))
    html = write_index(tmp_path).read_text()
    assert "<img" not in html and "&lt;img src=" in html and "<b>" not in html


def test_concurrent_packs_each_get_a_directory_zip_and_index_row(tmp_path):
    errors = []

    def run():
        try:
            write_pack(make_evidence(), tmp_path)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    packs = sorted(p.name for p in (tmp_path / "packs" / "2026-Q1").iterdir() if p.is_dir())
    assert packs == ["20260402T060000Z", "20260402T060000Z-1", "20260402T060000Z-2"]
    assert all((tmp_path / "packs" / "2026-Q1" / f"{p}.zip").is_file() for p in packs)
    assert (tmp_path / "packs" / "index.html").read_text().count("<tr>") == 4
    last = json.loads((tmp_path / "packs" / "2026-Q1" / packs[-1] / "manifest.json").read_text())
    assert last["previous_pack"]["path"] == f"packs/2026-Q1/{packs[1]}"
