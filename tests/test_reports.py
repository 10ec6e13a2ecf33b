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
from reports import html as html_module
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
    "samples.csv", "workbook.xlsx",
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
    """For tests about naming and atomicity, where the report's content does not matter."""
    monkeypatch.setattr(pack_module, "render_pdf", lambda html: b"%PDF-1.7 stub\n")
    monkeypatch.setattr(pack_module, "render_report",
                        lambda evidence, target, context: f"<p>{context.pack_id}</p>")


def controls_only(html: str) -> str:
    """The report's head and its controls chapter: what a test of that chapter's printing
    needs, at a fraction of the whole report's rendering time."""
    body = re.search(r'<section id="controls".*?\n</section>\n', html, re.S).group(0)
    return html[:html.index("<body")] + "<body>" + body + "</body></html>"


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
    # beside the directory, outside what the manifest hashes: the zip and the index
    assert (store / "packs" / "2026-Q1" / "20260402T060000Z.zip").is_file()
    assert (store / "packs" / "index.html").is_file()
    assert not [p for p in (store / "packs").rglob(".*")]        # no temporary files left


def test_manifest_records_files_snapshots_and_config(pack, evidence):
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["kind"] == "pack"
    assert manifest["tool_version"] == "0.1.0"
    assert manifest["generated_at"] == "2026-04-02T06:00:00Z"
    assert manifest["period"] == {"label": "2026-Q1", "start": "2026-01-01T00:00:00Z",
                                  "end": "2026-04-01T00:00:00Z"}
    assert manifest["status"] == "incomplete"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}",
                        manifest["pack_id"])
    assert manifest["exceptions"] == 5
    assert manifest["integrity"] == {}            # no signing options
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
    """Populations are counted and sampled (at most 40 rows each), never listed: a population
    ten times larger changes the report by the digits of its counts and its sample rows."""
    def size(**kw):
        return len(render_report(make_evidence(**kw), target="pdf"))
    base = size(population=2_000)
    big_population = size(population=20_000)
    more_exceptions = size(population=2_000, extra_exceptions=50)
    assert abs(big_population - base) < 0.05 * base
    assert more_exceptions - base > 50 * 300    # a table row per exception


def test_report_pdf(pack):
    reader = PdfReader(io.BytesIO((pack / "report.pdf").read_bytes()))
    pages = [p.extract_text() for p in reader.pages]
    assert 6 <= len(pages) <= 20
    assert "Access provisioning and deprovisioning" in pages[0]
    assert f"Page 1 of {len(pages)}" in pages[0]
    assert f"Page {len(pages)} of {len(pages)}" in pages[-1]
    pack_id = json.loads((pack / "manifest.json").read_text())["pack_id"]
    assert pack_id in pages[0]
    assert all(f"Period 2026-Q1 · pack {pack_id}" in text for text in pages[1:])  # header
    everything = "\n".join(pages)
    assert "deprovisioning-timely" in everything and "Appendix A" in everything
    # the controls chapter is landscape for its ten-column exception tables
    assert any(p.mediabox.width > p.mediabox.height for p in reader.pages)
    assert reader.pages[0].mediabox.width < reader.pages[0].mediabox.height


def test_report_pdf_repeats_table_headers():
    many = make_evidence(extra_exceptions=30)
    reader = PdfReader(io.BytesIO(render_pdf(controls_only(render_report(many, target="pdf")))))
    with_header = [p for p in reader.pages if "Person / email" in p.extract_text()]
    assert len(with_header) >= 3


def test_long_exception_lists_print_as_a_listing(monkeypatch):
    """Above TABLE_LIMIT rows a control's exceptions are a fixed-width listing (few boxes for
    WeasyPrint); every exception is still there, the header repeats, the HTML keeps its table."""
    monkeypatch.setattr(html_module, "TABLE_LIMIT", 10)
    ev = make_evidence(extra_exceptions=120)
    text = render_report(ev, target="pdf")
    assert 'class="listing" id="exceptions-deprovisioning-timely"' in text
    assert 'class="grid exceptions" id="exceptions-orphaned-accounts"' in text  # 2 rows: table
    reader = PdfReader(io.BytesIO(render_pdf(controls_only(text))))
    pages = [p.extract_text() for p in reader.pages]
    listing = [t for t in pages if "Person / email" in t and "Over SLA h" in t]
    assert len(listing) >= 2                         # header on every page of the listing
    everything = "\n".join(pages)
    for i in (0, 57, 119):
        assert f"user{i}@corp.example" in everything
    assert "+28.5" in everything and "≤ 2026-02-21 02:00" in everything
    html = render_report(ev)
    assert html.count("<tr>") > 123 and 'class="listing"' not in html


def test_listing_keeps_columns_aligned():
    rows = html_module.exception_rows(make_evidence(extra_exceptions=20).controls[0].exceptions)
    listing = html_module.compact_listing(rows)
    lines = [line for group in listing["groups"] for line in group.split("\n")]
    assert len(lines) == len(rows) == 23
    assert all(len(line) <= html_module.LISTING_WIDTH for line in lines)
    col = listing["header"].index("Reason")
    assert all(line[col:].startswith(r["reason"][:20]) for line, r in zip(lines, rows))


def test_ticket_links_are_links():
    html = render_report(make_evidence())
    assert ('href="https://corp.atlassian.net/browse/OFF-311" rel="noopener noreferrer '
            'nofollow"') in html
    f = make_evidence().exceptions[0]
    f.detail = "see javascript:alert(1) and https://x.example/a b"
    assert html_module.finding_link(f) == "https://x.example/a"
    f.detail = 'ticket "https://x.example/" onclick="x"'
    assert html_module.finding_link(f) == "https://x.example/"
    f.detail, f.evidence = "javascript://x.example/%0Aalert(1)", None
    assert html_module.finding_link(f) is None


def test_samples_charts_and_snapshot_hashes(pack):
    html = (pack / "report.html").read_text()
    manifest = json.loads((pack / "manifest.json").read_text())
    samples = read_csv(pack / "samples.csv")
    assert samples[0] == ["population", "row", "draw", "sample_size", "population_size",
                          "seed", "size_from"]
    sizes = {}
    for row in samples[1:]:
        sizes[row[0]] = sizes.get(row[0], 0) + 1
    # the default table: 10 rows → 3 (5-12), 40 → 10 (13-52), 6 → 3
    assert sizes == {"deprovisioning-timely": 3, "no-access-after-termination": 3,
                     "orphaned-accounts": 10, "terminations": 3}
    assert {row[5] for row in samples[1:]} == {manifest["pack_id"]}   # seed: the pack id
    assert 'id="population-orphaned-accounts"' in html
    assert 'aria-labelledby="coverage-title"' in html
    assert 'aria-labelledby="latency-title"' in html
    for ref in manifest["snapshots"]:        # every snapshot hash, in the compact listing
        assert ref["manifest_sha256"] in html
    assert manifest["annex_sha256"] in html


def test_entity_paper_and_sample_options(tmp_path, monkeypatch):
    monkeypatch.setattr(pack_module, "render_pdf", lambda html: b"%PDF-1.7 stub\n")
    out = write_pack(make_evidence(), tmp_path, options={
        "entity": "Northwind Traders, Inc.", "paper": "a4", "sample_size": 2,
        "sample_seed": 42})
    html = (out / "report.html").read_text()
    assert "Northwind Traders, Inc." in html and "size: A4" in html
    rows = read_csv(out / "samples.csv")[1:]
    assert {r[3] for r in rows} == {"2"} and {r[5] for r in rows} == {"42"}


@pytest.mark.parametrize("options, key", [
    ({"colour": "blue"}, "colour"), ({"paper": "legal"}, "paper"),
    ({"sample_size": -1}, "sample_size"), ({"sample_size": {"default": "x"}}, "sample_size"),
    ({"timestamp_url": "ftp://tsa"}, "timestamp_url"),
    ({"timestamp_url": "http://tsa.example/"}, "timestamp_ca_bundle"),
    ({"timestamp_url": "http://tsa.example/", "timestamp_ca_bundle": "ca.pem"},
     "timestamp_ca_bundle"),
    ({"signing_key": "/etc/key.pem"}, "signing_key"),
    ({"zip": "yes"}, "zip"),
])
def test_bad_pack_options_name_the_key(tmp_path, options, key):
    from collector.errors import ConfigError
    with pytest.raises(ConfigError, match=rf"\[pack\] key '{key}"):
        write_pack(make_evidence(), tmp_path, options=options)
    assert not list(tmp_path.glob("packs/*/*"))


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
