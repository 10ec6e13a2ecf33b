"""The evidence pack: layout, manifest, results.json, CSV annex, report content (DESIGN §5, §9)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from pypdf import PdfReader

from collector.results import Finding
from collector.store import sha256_file
from evidence_factory import make_evidence
from reports import pack as pack_module
from reports.html import render_report
from reports.manifest import verify_ok, verify_pack
from reports.pack import write_pack
from reports.pdf import render_pdf
from reports.results_json import jsonable
from reports.tables import EXCEPTION_COLUMNS

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
PACK_FILES = {
    "report.html", "report.pdf", "results.json", "exceptions.csv", "manifest.json",
    "populations/deprovisioning-timely.csv", "populations/no-access-after-termination.csv",
    "populations/orphaned-accounts.csv", "populations/orphaned-accounts-excluded.csv",
    "populations/terminations.csv",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def evidence(store):
    return make_evidence(store_root=store)


@pytest.fixture(scope="module")
def pack(evidence, store):
    return write_pack(evidence, store)


@pytest.fixture
def fast_pdf(monkeypatch):
    """For tests about naming and atomicity, where the PDF's content does not matter."""
    monkeypatch.setattr(pack_module, "render_pdf", lambda html: b"%PDF-1.7 stub\n")


def files_of(pack_dir):
    return {p.relative_to(pack_dir).as_posix() for p in pack_dir.rglob("*") if p.is_file()}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


# --- layout and manifest ---

def test_pack_is_written_under_period_and_timestamp(pack, store):
    assert pack == store / "packs" / "2026-Q1" / "20260402T060000Z"
    assert files_of(pack) == PACK_FILES
    assert not [p for p in (store / ".tmp").iterdir() if p.name.startswith("pack-")]


def test_manifest_records_files_snapshots_and_config(pack, evidence):
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["kind"] == "pack"
    assert manifest["tool_version"] == "0.1.0"
    assert manifest["generated_at"] == "2026-04-02T06:00:00Z"
    assert manifest["period"] == {"label": "2026-Q1", "start": "2026-01-01T00:00:00Z",
                                  "end": "2026-04-01T00:00:00Z"}
    assert manifest["status"] == "incomplete"
    assert list(manifest["files"]) == sorted(PACK_FILES - {"manifest.json"})
    for rel, digest in manifest["files"].items():
        assert sha256_file(pack / rel) == digest
    refs = [r for s in evidence.sources for r in s.snapshots]
    assert len(manifest["snapshots"]) == len(refs) == 8
    first = manifest["snapshots"][0]
    assert set(first) == {"source", "path", "manifest_sha256", "started_at", "finished_at",
                          "status"}
    assert first["source"] == "aws-prod" and ISO_Z.match(first["started_at"])
    assert first["manifest_sha256"] == refs[0].manifest_sha256
    assert manifest["previous_pack"] is None
    assert manifest["config"] == jsonable(evidence.config_digest)
    assert manifest["config"]["config"]["service_accounts"]["expires"] == "2027-06-30"


def test_fresh_pack_verifies(pack):
    checks = verify_pack(pack)
    assert verify_ok(checks), checks


def test_same_second_gets_a_suffix_and_chains(tmp_path, fast_pdf):
    ev = make_evidence()
    first = write_pack(ev, tmp_path)
    second = write_pack(ev, tmp_path)
    third = write_pack(ev, tmp_path)
    assert [first.name, second.name, third.name] == [
        "20260402T060000Z", "20260402T060000Z-1", "20260402T060000Z-2"]
    link = json.loads((third / "manifest.json").read_text())["previous_pack"]
    assert link == {"path": "packs/2026-Q1/20260402T060000Z-1",
                    "manifest_sha256": sha256_file(second / "manifest.json")}


def test_chain_spans_periods(tmp_path, fast_pdf):
    q1 = write_pack(make_evidence(), tmp_path)
    q2 = write_pack(make_evidence(in_progress=True), tmp_path)
    assert q2.parent.name == "2026-Q2"
    link = json.loads((q2 / "manifest.json").read_text())["previous_pack"]
    assert link["path"] == "packs/2026-Q1/20260402T060000Z"
    assert link["manifest_sha256"] == sha256_file(q1 / "manifest.json")


def test_range_label_is_one_directory(tmp_path, fast_pdf):
    from collector.periods import parse_period
    ev = make_evidence()
    ev.period = parse_period("2026-01-01..2026-03-31")
    out = write_pack(ev, tmp_path)
    assert out.parent == tmp_path / "packs" / "2026-01-01..2026-03-31"


def test_failed_render_leaves_no_pack(tmp_path, monkeypatch):
    def boom(html):
        raise RuntimeError("renderer crashed")
    monkeypatch.setattr(pack_module, "render_pdf", boom)
    with pytest.raises(RuntimeError):
        write_pack(make_evidence(), tmp_path)
    assert not list(tmp_path.glob("packs/*/*"))
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_unsafe_population_name_is_refused(tmp_path, fast_pdf):
    ev = make_evidence()
    ev.extra_populations = {"../escape": ev.extra_populations["terminations"]}
    with pytest.raises(ValueError, match="file name"):
        write_pack(ev, tmp_path)
    assert not (tmp_path / "escape.csv").exists()
    assert not list(tmp_path.glob("packs/*/*"))


# --- results.json ---

def test_results_json_follows_the_contract(pack, evidence):
    data = json.loads((pack / "results.json").read_text())
    assert set(data) == {"schema_version", "generated_at", "tool_version", "period", "status",
                         "sources", "controls"}
    assert data["schema_version"] == 1
    assert data["generated_at"] == "2026-04-02T06:00:00Z"
    assert data["period"] == {"label": "2026-Q1", "start": "2026-01-01T00:00:00Z",
                              "end": "2026-04-01T00:00:00Z", "in_progress": False}
    assert data["status"] == "incomplete"

    assert [s["name"] for s in data["sources"]] == ["aws-prod", "entra"]
    for s in data["sources"]:
        assert set(s) == {"name", "type", "status", "error", "limitations", "coverage_start",
                          "coverage_end", "records"}
        assert ISO_Z.match(s["coverage_start"]) and ISO_Z.match(s["coverage_end"])
    assert data["sources"][1]["status"] == "degraded"
    assert data["sources"][0]["records"] == {"accounts": 48, "events": 1210}

    by_id = {c["id"]: c for c in data["controls"]}
    assert [c["status"] for c in data["controls"]] == ["fail", "not_evaluable", "fail"]
    for c in data["controls"]:
        assert set(c) == {"id", "title", "status", "complete", "limitations", "population",
                          "exceptions"}
        assert isinstance(c["population"], int)
    assert by_id["orphaned-accounts"]["population"] == 40
    assert by_id["no-access-after-termination"]["limitations"]
    exc = by_id["deprovisioning-timely"]["exceptions"][0]
    assert exc == {"control": "deprovisioning-timely", "reason": "disabled_late",
                   "source": "aws-prod", "account": "bob.tables",
                   "email": "bob.tables@corp.example", "person_id": "P-1002",
                   "detail": "console password removed 52.5 h after termination (SLA 24 h)"}
    assert by_id["orphaned-accounts"]["exceptions"][0]["email"] is None


def test_results_json_in_progress(tmp_path, fast_pdf):
    out = write_pack(make_evidence(in_progress=True), tmp_path)
    data = json.loads((out / "results.json").read_text())
    assert data["period"]["in_progress"] is True
    assert data["period"]["label"] == "2026-Q2"


# --- annex CSVs ---

def test_exceptions_csv_has_one_row_per_finding(pack, evidence):
    rows = read_csv(pack / "exceptions.csv")
    assert tuple(rows[0]) == EXCEPTION_COLUMNS
    assert list(EXCEPTION_COLUMNS[:7]) == list(Finding("c", "r", "s", None, None, None,
                                                       "d").public())
    assert len(rows) - 1 == len(evidence.exceptions) == 5
    first = dict(zip(rows[0], rows[1]))
    assert first["control"] == "deprovisioning-timely"
    assert first["terminated_at"] == "2026-02-13T05:00:00Z"
    assert first["disabled_at"] == "2026-02-15T09:30:00Z"
    assert first["hours_over_sla"] == "28.5"
    still_enabled = dict(zip(rows[0], rows[2]))
    assert still_enabled["disabled_at"] == ""


def test_population_csvs_hold_full_populations(pack, evidence):
    for control in evidence.controls:
        rows = read_csv(pack / "populations" / f"{control.id}.csv")
        assert rows[0] == [str(c) for c in control.population.columns]
        assert len(rows) - 1 == len(control.population)
    excluded = read_csv(pack / "populations" / "orphaned-accounts-excluded.csv")
    assert excluded[1] == ["aws-prod", "ci-deployer", "platform@corp.example", "CI deploy user",
                           "2027-06-30"]
    terminations = read_csv(pack / "populations" / "terminations.csv")
    assert len(terminations) - 1 == len(evidence.extra_populations["terminations"])
    header = terminations[0]
    assert terminations[1][header.index("termination_effective")] == "2026-01-11T05:00:00Z"


# --- report content ---

def test_report_html_content(pack, evidence):
    html = (pack / "report.html").read_text().replace("<wbr>", "")
    for text in [
        "Access provisioning and deprovisioning evidence — SOC 2 CC6.2",
        "Period 2026-Q1", "2026-01-01 00:00 UTC", "2026-04-01 00:00 UTC",
        "incomplete", "2026-04-02 06:00:00 UTC", "accessproof 0.1.0", "manifest.json",
        # every control, with status, population pointer and limitations
        "deprovisioning-timely", "no-access-after-termination", "orphaned-accounts",
        "Access removed within the SLA after termination", "badge-not_evaluable",
        "populations/deprovisioning-timely.csv", "populations/orphaned-accounts-excluded.csv",
        "4 linked accounts cannot be judged",
        # exception columns
        "bob.tables@corp.example", "P-1002", "disabled_late", "2026-02-15 09:30 UTC", "28.5",
        "snapshot bound", "ci-deployer",
        # sources, coverage, gaps
        "signInActivity is not returned", "2025-10-02 02:00 UTC", "Unrecoverable",
        "accounts: 48",
        # IPE
        "https://cloudtrail.us-east-1.amazonaws.com/",
        "arn:aws:sts::123456789012:assumed-role/accessproof-read/collector",
        evidence.sources[0].snapshots[0].manifest_sha256, "GetAccountAuthorizationDetails",
        # policy
        "deprovision_sla_hours", "24.0", "America/New_York",
    ]:
        assert text in html, text
    assert "Period in progress" not in html


def test_report_says_period_in_progress():
    html = render_report(make_evidence(in_progress=True))
    assert "Period in progress" in html
    assert "2026-05-14 09:30 UTC" in html


def test_report_size_grows_with_exceptions_not_population():
    base = len(render_report(make_evidence(population=40)))
    big_population = len(render_report(make_evidence(population=20_000)))
    more_exceptions = len(render_report(make_evidence(extra_exceptions=50)))
    assert abs(big_population - base) < 100     # only the counts' digits differ
    assert more_exceptions - base > 50 * 300    # a table row per exception


def test_report_pdf(pack):
    reader = PdfReader(io.BytesIO((pack / "report.pdf").read_bytes()))
    pages = [p.extract_text() for p in reader.pages]
    assert 3 <= len(pages) <= 12
    assert "Access provisioning and deprovisioning" in pages[0]
    assert f"Page 1 of {len(pages)}" in pages[0]
    assert f"Page {len(pages)} of {len(pages)}" in pages[-1]
    assert all("Period 2026-Q1" in text for text in pages[1:])   # running header
    everything = "\n".join(pages)
    assert "deprovisioning-timely" in everything and "Appendix A" in everything
    # the controls chapter is landscape for its ten-column exception tables
    assert any(p.mediabox.width > p.mediabox.height for p in reader.pages)
    assert reader.pages[0].mediabox.width < reader.pages[0].mediabox.height


def test_report_pdf_repeats_table_headers():
    many = make_evidence(extra_exceptions=30)
    reader = PdfReader(io.BytesIO(render_pdf(render_report(many))))
    with_header = [p for p in reader.pages if "Person / email" in p.extract_text()]
    assert len(with_header) >= 3


def test_failed_source_is_stated_on_the_cover():
    ev = make_evidence()
    entra = ev.sources[1]
    entra.status, entra.error = "failed", "HTTP 403 from Graph: Authorization_RequestDenied"
    entra.ipe, entra.snapshots, entra.gaps, entra.records = {}, [], [], {}
    entra.coverage_start = entra.coverage_end = None
    html = render_report(ev).replace("<wbr>", "")
    cover = html[:html.index('id="summary"')]
    assert "<strong>entra</strong>" in cover and "failed or is missing" in cover
    assert "Authorization_RequestDenied" in html
    assert "No good collection of this source" in html


def test_complete_evidence_says_complete():
    ev = make_evidence()
    for control in ev.controls:
        control.complete, control.limitations = True, []
    html = render_report(ev)
    assert ev.status == "complete"
    assert "Every control was evaluated on complete evidence" in html
    assert 'class="overall overall-complete"' in html
