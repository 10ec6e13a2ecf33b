"""report.html and the HTML that WeasyPrint prints as report.pdf: one Jinja2 template, two targets.

- ``target="html"``: the self-contained browser report. Its exception and sample tables are
  sortable and filterable by a small inline script; a Content-Security-Policy allows that one
  script (by hash), inline styles and ``data:`` images, and nothing else, so the page cannot
  fetch anything even if it tried.
- ``target="pdf"``: the same content for print. Long exception lists (more than
  ``TABLE_LIMIT`` rows in one control) are printed as a compact two-line listing instead of a
  ten-column table: WeasyPrint's cost is per table cell and per glyph, and a few thousand
  exceptions must still print in seconds. Every value is in full in exceptions.csv and
  workbook.xlsx.

Display names and ticket summaries are attacker-controlled, so autoescaping is on for every
template regardless of its file name (``select_autoescape`` would not cover ``*.html.j2``), and
a misspelt variable is an error rather than an empty cell.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FunctionLoader, StrictUndefined
from markupsafe import Markup, escape

from collector.results import ControlResult, Evidence, Finding, SourceReport
from collector.store import iso

from . import sampling
from .charts import Chart, coverage_chart, latency_chart
from .options import PackOptions

TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"
SCRIPT = "report-js.j2"          # *.j2: covered by the package data of templates/

# A control with more exceptions than this is printed as a compact listing in the PDF.
TABLE_LIMIT = 60

POLICY_LABELS = {
    "deprovision_sla_hours": "Deprovisioning SLA (hours from termination to account disabled)",
    "login_grace_minutes": "Sign-in grace after termination (minutes)",
    "approval_grace_minutes": "Approval may trail account creation by (minutes)",
    "inactive_days": "Dormant account threshold (days, informational)",
}


def _package_text(name: str) -> str:
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"not a packaged template name: {name!r}")
    return files("templates").joinpath(name).read_text(encoding="utf-8")


def _missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def fmt_utc(value: Any, seconds: bool = False) -> str:
    if _missing(value):
        return "—"
    ts = pd.Timestamp(value).tz_convert("UTC")
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def fmt_decimal(value: Any) -> str:
    return "—" if _missing(value) else f"{float(value):.1f}"


_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")


def fmt_value(value: Any) -> str:
    """Any IPE, policy or excluded-item value as one line of text."""
    if isinstance(value, np.generic):
        value = value.item()
    if _missing(value):
        return "—"
    if isinstance(value, dt.datetime) or (isinstance(value, str) and _ISO_TIME.match(value)):
        ts = pd.Timestamp(value)
        if ts.tzinfo is None:
            return str(value)
        return fmt_utc(ts, seconds=True)
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return ", ".join(str(v) for v in value) or "—"
    if isinstance(value, (dict, list, tuple, np.ndarray)):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return str(value)


_BREAK_AFTER = re.compile(r"([@._/\\-])")


def soft_breaks(value: Any, soft: bool = True) -> Markup:
    """Escaped text with line-break opportunities after @ . _ / - (emails, logins, paths).

    ``soft=False`` (the PDF): the text alone. Every ``<wbr>`` is an inline box to WeasyPrint and
    doubled the time to print a report; its table cells break long words by CSS instead, and
    the PDF's text stays searchable as written.
    """
    text = "—" if _missing(value) or value == "" else str(value)
    if not soft:
        return escape(text)
    # escape first: the entities it produces contain none of the characters matched
    return Markup(_BREAK_AFTER.sub(r"\1<wbr>", str(escape(text))))


def fmt_count(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return fmt_value(value)


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FunctionLoader(_package_text), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(utc=fmt_utc, decimal=fmt_decimal, iso=iso, value=fmt_value,
                       count=fmt_count, breakable=soft_breaks)
    env.globals.update(plural=plural)
    return env


@lru_cache(maxsize=1)
def stylesheet() -> Markup:
    css = _package_text(STYLESHEET)
    # The CSS is inlined in <style>, where HTML escaping does not apply; it is package data.
    if "</" in css:
        raise ValueError(f"{STYLESHEET} must not contain '</'")
    return Markup(css)


@lru_cache(maxsize=1)
def script() -> tuple[Markup, str]:
    """The inline script and its CSP hash source."""
    js = _package_text(SCRIPT)
    if "</" in js or "<!--" in js:
        raise ValueError(f"{SCRIPT} must not contain '</' or '<!--'")
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()
    return Markup(js), f"'sha256-{digest}'"


# --- the pack being written ----------------------------------------------------------------------

@dataclass
class PackContext:
    """Facts about the pack that the report states, known before the report is rendered."""

    pack_id: str | None = None
    options: PackOptions = field(default_factory=PackOptions)
    samples: dict[str, sampling.Sample] = field(default_factory=dict)
    annex_sha256: str | None = None
    annex_files: list[tuple[str, str]] = field(default_factory=list)   # (path, sha256)
    sheets: dict[str, str] = field(default_factory=dict)               # population → sheet
    signing_key_sha256: str | None = None
    pdf_signer: tuple[str, str] | None = None                          # (subject, cert sha256)
    timestamp_url: str | None = None
    charts: dict[str, Any] = field(default_factory=dict)   # drawn once for both targets


def population_frames(evidence: Evidence) -> dict[str, pd.DataFrame]:
    """Every population written to populations/<name>.csv, by name, in pack order."""
    out: dict[str, pd.DataFrame] = {}
    for c in evidence.controls:
        out[c.id] = c.population
        if c.excluded is not None and len(c.excluded):
            out[f"{c.id}-excluded"] = c.excluded
    for name, df in evidence.extra_populations.items():
        out[name] = df
    return out


def sampled_populations(evidence: Evidence) -> dict[str, pd.DataFrame]:
    """The populations a sample is drawn from: all but the lists of excluded items."""
    excluded = {f"{c.id}-excluded" for c in evidence.controls}
    return {k: v for k, v in population_frames(evidence).items() if k not in excluded}


def draw_samples(evidence: Evidence, options: PackOptions, seed: str) -> dict[str, sampling.Sample]:
    return {name: sampling.sample(name, len(df), options.sample_size, seed)
            for name, df in sampled_populations(evidence).items()}


def preview_context(evidence: Evidence) -> PackContext:
    """For a report rendered outside a pack (tests, previews): no pack id, a fixed seed."""
    seed = f"preview-{evidence.period.label}"
    return PackContext(samples=draw_samples(evidence, PackOptions(), seed))


# --- building blocks of the report --------------------------------------------------------------

def population_files(evidence: Evidence) -> dict[str, list[str]]:
    """The annex CSV files of each control, by control id."""
    out = {}
    for c in evidence.controls:
        out[c.id] = [f"populations/{c.id}.csv"]
        if c.excluded is not None and len(c.excluded):
            out[c.id].append(f"populations/{c.id}-excluded.csv")
    return out


def _excluded_rows(df: pd.DataFrame | None) -> dict[str, Any] | None:
    if df is None or not len(df):
        return None
    columns = [str(c) for c in df.columns]
    rows = [[fmt_value(v) for v in row] for row in df.itertuples(index=False, name=None)]
    return {"columns": columns, "rows": rows}


_URL = re.compile(r"https?://[^\s<>\"'`]+", re.I)


def safe_url(value: Any) -> str | None:
    """An http(s) URL fit for a link, or None."""
    if not isinstance(value, str):
        return None
    value = value.strip().rstrip(".,;:)")
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or \
            any(ch.isspace() or ord(ch) < 32 for ch in value):
        return None
    return value


def finding_link(f: Finding) -> str | None:
    """The ticket or evidence URL of a finding: a ``ticket_url``/``url`` field when the finding
    has one, else the first http(s) URL in its evidence or detail text."""
    for attr in ("ticket_url", "url"):
        url = safe_url(getattr(f, attr, None))
        if url:
            return url
    for text in (f.evidence, f.detail):
        if isinstance(text, str):
            m = _URL.search(text)
            if m and (url := safe_url(m[0])):
                return url
    return None


def link_label(url: str) -> str:
    """A short label for a ticket URL: the ticket key when the URL ends in one, else the host."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    for key in ("selectedIssue", "sys_id", "number", "key", "id"):
        if key in query:
            return query[key][0]
    tail = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return urllib.parse.unquote(tail) if tail else parts.netloc


def _disabled_text(f: Finding) -> str:
    if f.reason == "still_enabled":
        return "not disabled"
    if _missing(f.disabled_at):
        return "—"
    bound = "≤ " if (_text(f.evidence) or "").lower() == "snapshot bound" else ""
    return bound + fmt_utc(f.disabled_at)


def _iso_or_empty(value: Any) -> str:
    return "" if _missing(value) else iso(pd.Timestamp(value))


def _text(value: Any) -> str | None:
    """A finding's text field: None when missing (None, NaN, pd.NA), else text."""
    return None if _missing(value) else str(value)


def exception_rows(findings: list[Finding]) -> list[dict[str, Any]]:
    rows = []
    for n, f in enumerate(findings, 1):
        url = finding_link(f)
        ticket = _text(getattr(f, "ticket", None))      # the ticket key, when the finding has one
        rows.append({
            "n": n, "email": _text(f.email), "person_id": _text(f.person_id),
            "source": _text(f.source), "account": _text(f.account),
            "display_name": _text(f.display_name), "reason": _text(f.reason),
            "terminated": fmt_utc(f.terminated_at), "terminated_v": _iso_or_empty(f.terminated_at),
            "disabled": _disabled_text(f), "disabled_v": _iso_or_empty(f.disabled_at),
            "over": "—" if _missing(f.hours_over_sla) else f"+{float(f.hours_over_sla):,.1f}",
            "over_v": "" if _missing(f.hours_over_sla) else f"{float(f.hours_over_sla):.2f}",
            "evidence": _text(f.evidence) or "—", "url": url, "ticket": ticket,
            "url_label": ticket or (link_label(url) if url else None),
            "detail": _text(f.detail) or "",
        })
    return rows


EXCEPTION_HEADERS = {
    "n": "#", "who": "Person / email", "source": "System",
    "account": "Account / display name", "reason": "Reason", "terminated": "Terminated",
    "disabled": "Disabled", "over": "Over SLA (h)", "evidence": "Evidence / ticket",
    "detail": "Detail",
}
_OPTIONAL = ("terminated", "disabled", "over")      # shown when any exception has a value


def exception_columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in EXCEPTION_HEADERS
            if k not in _OPTIONAL or any(r[k] not in ("—", "", None) for r in rows)]


TABLE_MM = 251.0          # a landscape letter page's text width (A4 is wider: more room)
CELL_PAD_MM = 3.2         # left and right padding of a cell
CHAR_MM = 1.37            # an average character of 7.2 pt DejaVu Sans Condensed


def exception_widths(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """Percent widths of the exception table's columns from their content. Dates, numbers,
    reasons and the system get what they need so they never wrap mid-word; person, account
    (with the display name under it; both break after @ . _ - /) and detail share the rest."""
    sample = rows[:200]

    def longest(key: str, cap: int) -> int:
        return min(max([len(str(r[key])) for r in sample
                        if not _missing(r[key]) and r[key] != ""] + [1]), cap)

    fixed = {"n": max(len(str(len(rows))), 2), "source": longest("source", 12),
             "reason": longest("reason", 17), "terminated": 11,
             "disabled": 12 if any(r["disabled"].startswith("≤") for r in sample) else 11,
             "over": 8, "evidence": max(longest("evidence", 26), longest("url_label", 16), 8)}
    flexible = {"who": max(longest("email", 28), longest("person_id", 28)),
                "account": max(longest("account", 28), int(longest("display_name", 24) * 1.05)),
                "detail": max(longest("detail", 120), 24)}
    room = (TABLE_MM - CELL_PAD_MM * len(columns)) / CHAR_MM
    room -= sum(v for k, v in fixed.items() if k in columns)
    flex = {k: v for k, v in flexible.items() if k in columns}
    if sum(flex.values()) > room:          # the longest give way first, down to 12
        cap = max(flex.values())
        while cap > 12 and sum(min(v, cap) for v in flex.values()) > room:
            cap -= 1
        flex = {k: min(v, cap) for k, v in flex.items()}
    elif "detail" in flex:                 # room to spare: the detail takes it
        flex["detail"] += room - sum(flex.values())
    chars = {**fixed, **flex}
    mm = [chars[k] * CHAR_MM + CELL_PAD_MM for k in columns]
    total = sum(mm)
    return [f"{100 * w / total:.2f}" for w in mm]


# compact listing: (key, header, width); widths in characters of the monospaced font. The
# detail column takes what is left of the line.
_LISTING_COLUMNS = (
    ("n", "#", 5), ("who", "Person / email", 27), ("source", "System", 10),
    ("account", "Account", 24), ("reason", "Reason", 20), ("terminated", "Terminated", 16),
    ("disabled", "Disabled", 18), ("over", "Over SLA h", 10), ("evidence", "Basis", 14),
    ("link", "Ticket / link", 28), ("detail", "Detail", 0),
)
# columns that give up width, down to these minimums, when the line would be too long
_SHRINK = {"link": 18, "account": 16, "who": 20, "reason": 15, "evidence": 10}
LISTING_WIDTH = 184          # characters of 6.3 pt DejaVu Sans Mono across a landscape page
LISTING_DETAIL_MIN = 24
LISTING_GROUP = 5


def _fit(text: Any, width: int) -> str:
    text = "—" if _missing(text) or text == "" else " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _listing_value(row: dict[str, Any], key: str) -> Any:
    if key == "who":
        return row["email"] or row["person_id"]
    if key in ("terminated", "disabled"):
        return row[key].replace(" UTC", "")
    if key == "link":
        return row["url_label"]
    return row[key]


def compact_listing(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One fixed-width line per exception, five lines to a block: WeasyPrint's cost is per
    box and per line, so this prints thousands of exceptions in seconds."""
    columns = [list(c) for c in _LISTING_COLUMNS
               if c[0] in ("n", "who", "source", "account", "reason", "detail")
               or any(_listing_value(r, c[0]) not in (None, "", "—") for r in rows)]
    def used() -> int:
        return sum(w for _, _, w in columns[:-1]) + 2 * (len(columns) - 1)
    budget = LISTING_WIDTH - LISTING_DETAIL_MIN
    for key, minimum in _SHRINK.items():
        for col in columns:
            if col[0] == key and used() > budget:
                col[2] = max(minimum, col[2] - (used() - budget))
    columns[-1][2] = max(LISTING_WIDTH - used(), 8)
    header = "  ".join(h.rjust(w) if k == "n" else h.ljust(w) for k, h, w in columns).rstrip()
    lines = []
    for row in rows:
        cells = []
        for key, _, width in columns:
            if key == "n":
                cells.append(str(row["n"]).rjust(width))
            else:
                cells.append(_fit(_listing_value(row, key), width).ljust(width))
        lines.append("  ".join(cells).rstrip())
    groups = ["\n".join(lines[k:k + LISTING_GROUP]) for k in range(0, len(lines), LISTING_GROUP)]
    return {"header": header, "groups": groups,
            "columns": [h for _, h, _ in columns]}


def _cadence(source: SourceReport, evidence: Evidence) -> dict[str, Any]:
    period = evidence.period
    starts = sorted(pd.Timestamp(r.started_at) for r in source.snapshots)
    inside = [t for t in starts if period.start <= t < period.end]
    intervals = [(b - a).total_seconds() / 3600 for a, b in zip(starts, starts[1:])
                 if b >= period.start and a < period.end]
    gaps = source.gaps or []
    return {
        "total": len(starts), "in_period": len(inside),
        "first": f"{inside[0]:%Y-%m-%d %H:%M}" if inside else "—",
        "last": f"{inside[-1]:%Y-%m-%d %H:%M}" if inside else "—",
        "median": f"{float(np.median(intervals)):.1f} h" if intervals else "—",
        "longest": f"{max(intervals):.1f} h" if intervals else "—",
        "gaps": len(gaps), "unrecoverable": sum(bool(g.get("unrecoverable")) for g in gaps),
    }


IPE_LABELS = {
    "principal": "Run-as principal",
    "instances": "Instances (accounts, tenants)",
    "window": "Query time window",
    "parameters": "Parameters",
    "started_at": "Collection started",
    "finished_at": "Collection finished",
    "status": "Collection status",
    "tool_version": "Tool version",
    "path": "Snapshot",
    "snapshot": "Snapshot",
    "manifest_sha256": "Snapshot manifest SHA-256",
}


def _ipe(source: SourceReport) -> dict[str, Any]:
    """Split a source's IPE facts into request rows, table counts and plain facts."""
    ipe = {k: v for k, v in dict(source.ipe or {}).items() if v is not None}
    requests = []
    for name, req in sorted((ipe.pop("requests", None) or {}).items()):
        req = dict(req) if isinstance(req, dict) else {"value": req}
        requests.append({
            "name": name,
            "file": req.pop("file", None),
            "endpoint": fmt_value(req.pop("endpoint", None)),
            "parameters": fmt_value(req.pop("parameters", None)),
            "pages": fmt_count(req.pop("pages", None)),
            "records": fmt_count(req.pop("records", None)),
            "other": "" if not req else fmt_value(req),
        })
    tables = []
    for name, tab in sorted((ipe.pop("tables", None) or {}).items()):
        records = tab.get("records") if isinstance(tab, dict) else tab
        tables.append({"name": name, "records": fmt_count(records)})
    facts = []
    for key in [k for k in IPE_LABELS if k in ipe] + sorted(k for k in ipe if k not in IPE_LABELS):
        value = ipe[key]
        if key == "window" and isinstance(value, dict):
            text = f"{fmt_value(value.get('start'))} to {fmt_value(value.get('end'))}"
        elif key == "window" and isinstance(value, (list, tuple)) and len(value) == 2:
            text = f"{fmt_value(value[0])} to {fmt_value(value[1])}"
        else:
            text = fmt_value(value)
        facts.append((IPE_LABELS.get(key, key.replace("_", " ").capitalize()), text))
    return {"facts": facts, "requests": requests, "tables": tables}


def _snapshot_listing(source: SourceReport) -> dict[str, Any]:
    """Every snapshot used, as a fixed-width listing: two per line, left to right, when the
    directories follow the store's pattern (number, start time, flag, manifest SHA-256), else
    one per line with its directory."""
    refs = sorted(source.snapshots, key=lambda r: pd.Timestamp(r.started_at))
    prefix = f"snapshots/{source.name}/"
    entries, common, statuses = [], True, {}
    for k, ref in enumerate(refs, 1):
        started = pd.Timestamp(ref.started_at).tz_convert("UTC")
        if str(ref.path) != prefix + started.strftime("%Y%m%dT%H%M%S%fZ"):
            common = False
        statuses[ref.status] = statuses.get(ref.status, 0) + 1
        flag = " " if ref.status == "ok" else ("d" if ref.status == "degraded" else "!")
        entries.append((k, started, flag, str(ref.manifest_sha256), str(ref.path)))
    lines = []
    if common:
        for i in range(0, len(entries), 2):      # left to right, so each page is one stretch
            pair = entries[i:i + 2]
            lines.append("  ".join(f"{k:>3}{flag} {t:%Y-%m-%d %H:%M}  {sha}"
                                   for k, t, flag, sha, _ in pair))
        header = "  ".join(["  #  Started (UTC)     Snapshot manifest SHA-256".ljust(88)] *
                           (2 if len(entries) > 1 else 1)).rstrip()
    else:
        for k, t, flag, sha, path in entries:
            lines.append(f"{k:>3}{flag} {t:%Y-%m-%d %H:%M}  {sha}  {path}")
        header = "  #  Started (UTC)     Snapshot manifest SHA-256" + " " * 43 + "Directory"
    groups = ["\n".join(lines[k:k + LISTING_GROUP]) for k in range(0, len(lines), LISTING_GROUP)]
    return {"count": len(entries), "header": header, "groups": groups, "common_paths": common,
            "prefix": prefix,
            "first": f"{entries[0][1]:%Y-%m-%d %H:%M}" if entries else "—",
            "last": f"{entries[-1][1]:%Y-%m-%d %H:%M}" if entries else "—",
            "statuses": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "—",
            "flags": any(e[2] != " " for e in entries)}


def _duration(start: Any, end: Any) -> str:
    if _missing(start) or _missing(end):
        return "—"
    seconds = (pd.Timestamp(end) - pd.Timestamp(start)).total_seconds()
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}m{sec:02d}s" if minutes < 600 else f"{seconds / 3600:.1f}h"


# columns shown for a sampled item, in this order of preference; the rest are in the CSV. The
# control's verdict (``result``) is always shown, last.
_SAMPLE_COLUMNS = (
    "email", "person", "name", "source", "account", "login", "display_name", "change",
    "termination_effective", "terminated_on", "hired_on", "created", "at_or_after",
    "at_or_before", "disabled", "hours_to_disable", "login_at", "ticket", "linked_person",
    "privileged", "department", "title", "kind", "as_of", "person_id",
)
SAMPLE_MAX_COLUMNS = 8
_REDUNDANT = {"person": "email", "terminated_on": "termination_effective",
              "display_name": "name", "login": "account"}


def _sample_columns(df: pd.DataFrame) -> list[str]:
    names = [str(c) for c in df.columns]
    chosen = [c for c in _SAMPLE_COLUMNS if c in names
              and not (c in _REDUNDANT and _REDUNDANT[c] in names)]
    if len(chosen) < 4:
        chosen += [c for c in names if c not in chosen and c != "result"]
    limit = SAMPLE_MAX_COLUMNS - ("result" in names)
    return chosen[:limit] + (["result"] if "result" in names else [])


def _sample_cell(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (pd.Timestamp, dt.datetime)) and not _missing(value):
        ts = pd.Timestamp(value)
        return fmt_utc(ts) if ts.tzinfo else str(value)
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return fmt_value(value)


def sample_tables(evidence: Evidence, context: PackContext) -> list[dict[str, Any]]:
    frames = sampled_populations(evidence)
    out = []
    for name, df in frames.items():
        smp = context.samples.get(name)
        columns = _sample_columns(df) if len(df.columns) else []
        rows = []
        if smp is not None and smp.size:
            draw_no = {row: k for k, row in enumerate(smp.rows, 1)}
            positions = [r - 1 for r in smp.rows_sorted]
            picked = df.iloc[positions]
            col_idx = [df.columns.get_loc(c) if c in df.columns else None for c in columns]
            values = picked.to_numpy(dtype=object)
            for row_no, vals in zip(smp.rows_sorted, values):
                rows.append({"row": row_no, "draw": draw_no[row_no],
                             "cells": [_sample_cell(vals[i]) if isinstance(i, int) else "—"
                                       for i in col_idx]})
        out.append({"name": name, "file": f"populations/{name}.csv",
                    "sheet": context.sheets.get(name), "count": len(df), "sample": smp,
                    "columns": columns, "rows": rows, "widths": _widths(columns, rows),
                    "omitted": max(len(df.columns) - len(columns), 0)})
    return out


def _widths(columns: list[str], rows: list[dict[str, Any]], first: float = 7.0,
            line: int = 200) -> list[str]:
    """Column widths in percent from the content (the table layout is fixed, so neither the
    browser nor WeasyPrint measures the cells). Each column asks for its longest value plus
    room for padding, in characters; ``line`` characters fit across the table. When the asks
    exceed it, the longest columns give way first (water-filling), so short values never
    wrap."""
    need = []
    for i, name in enumerate(columns):
        header = max(len(part) for part in re.split(r"[_ ]", name))   # headers break at _
        need.append(max([len(r["cells"][i]) for r in rows] + [header]) + 4)
    room = line * (100 - first) / 100
    if sum(need) > room:
        cap = max(need)
        while cap > 6 and sum(min(n, cap) for n in need) > room:
            cap -= 1
        need = [min(n, cap) for n in need]
    total = sum(need) or 1
    return [f"{first:.1f}"] + [f"{(100 - first) * n / total:.2f}" for n in need]


def _exceptions_by_reason(evidence: Evidence) -> list[tuple[str, str, int]]:
    counts: dict[tuple[str, str], int] = {}
    for c in evidence.controls:
        for f in c.exceptions:
            counts[(c.id, f.reason)] = counts.get((c.id, f.reason), 0) + 1
    return [(c, r, n) for (c, r), n in counts.items()]


def _control_block(c: ControlResult, evidence: Evidence, target: str,
                   charts: dict[str, Any]) -> dict[str, Any]:
    rows = exception_rows(c.exceptions)
    compact = target == "pdf" and len(rows) > TABLE_LIMIT
    columns = exception_columns(rows)
    block: dict[str, Any] = {
        "result": c, "excluded": _excluded_rows(c.excluded), "rows": rows,
        "compact": compact_listing(rows) if compact else None,
        "columns": columns, "widths": exception_widths(columns, rows),
        "has_links": any(r["url"] for r in rows), "latency": None,
    }
    if c.id == "deprovisioning-timely":
        sla = evidence.policy.get("deprovision_sla_hours", 24) or 24
        if f"latency-{c.id}" not in charts:
            charts[f"latency-{c.id}"] = latency_chart(c.population, float(sla))
        drawn = charts[f"latency-{c.id}"]
        if drawn is not None:
            block["latency"] = {"chart": drawn[0], "facts": drawn[1]}
    return block


def _csp(script_hash: str) -> str:
    return ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src {script_hash}; base-uri 'none'; form-action 'none'")


def _page_css(options: PackOptions) -> Markup:
    if options.paper == "a4":
        return Markup("@page { size: A4; } @page wide { size: A4 landscape; }")
    return Markup("")


def render_report(evidence: Evidence, *, target: str = "html",
                  context: PackContext | None = None) -> str:
    """The report as HTML; ``target="pdf"`` for the variant WeasyPrint prints."""
    if target not in ("html", "pdf"):
        raise ValueError(f"unknown target {target!r}")
    context = context or preview_context(evidence)
    options = context.options
    js, js_hash = script()
    controls = [_control_block(c, evidence, target, context.charts) for c in evidence.controls]
    if "coverage" not in context.charts:
        context.charts["coverage"] = coverage_chart(evidence)
    coverage: Chart = context.charts["coverage"]
    return environment().get_template(TEMPLATE).render(
        ev=evidence,
        target=target,
        pack=context,
        options=options,
        entity=options.entity,
        css=stylesheet(),
        page_css=_page_css(options),
        js=js,
        csp=_csp(js_hash),
        controls=controls,
        coverage=coverage,
        cadence={s.name: _cadence(s, evidence) for s in evidence.sources},
        ipe={s.name: _ipe(s) for s in evidence.sources},
        snapshot_lists={s.name: _snapshot_listing(s) for s in evidence.sources},
        files=population_files(evidence),
        policy=[(POLICY_LABELS.get(k, k), k, fmt_value(v))
                for k, v in evidence.policy.items()],
        gaps=[(s, g) for s in evidence.sources for g in s.gaps],
        n_exceptions=len(evidence.exceptions),
        by_reason=_exceptions_by_reason(evidence),
        samples=sample_tables(evidence, context),
        sample_sizes=sampling.DEFAULT_SIZES,
        exception_headers=EXCEPTION_HEADERS,
        sample_method=sampling.METHOD,
        sample_code=sampling.REPERFORM,
        table_limit=TABLE_LIMIT,
        any_compact=any(c["compact"] for c in controls),
    )
