"""report.html: one Jinja2 template rendered once; the PDF is made from the same HTML.

Display names and ticket summaries are attacker-controlled, so autoescaping is on for every
template regardless of its file name (``select_autoescape`` would not cover ``*.html.j2``), and
a misspelt variable is an error rather than an empty cell.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from functools import lru_cache
from importlib.resources import files
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FunctionLoader, StrictUndefined
from markupsafe import Markup, escape

from collector.results import Evidence, SourceReport
from collector.store import iso

TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"

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
        return fmt_utc(value, seconds=True)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return ", ".join(str(v) for v in value) or "—"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return str(value)


_BREAK_AFTER = re.compile(r"([@._/\\-])")


def soft_breaks(value: Any) -> Markup:
    """Escaped text with line-break opportunities after @ . _ / - (emails, logins, paths)."""
    text = "—" if _missing(value) or value == "" else str(value)
    # escape first: the entities it produces contain none of the characters matched
    return Markup(_BREAK_AFTER.sub(r"\1<wbr>", str(escape(text))))


def fmt_count(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return fmt_value(value)


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FunctionLoader(_package_text), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(utc=fmt_utc, decimal=fmt_decimal, iso=iso, value=fmt_value,
                       count=fmt_count, breakable=soft_breaks)
    return env


@lru_cache(maxsize=1)
def stylesheet() -> Markup:
    css = _package_text(STYLESHEET)
    # The CSS is inlined in <style>, where HTML escaping does not apply; it is package data.
    if "</" in css:
        raise ValueError(f"{STYLESHEET} must not contain '</'")
    return Markup(css)


# IPE facts in the order an auditor reads them; unknown keys follow, sorted, never dropped.
IPE_LABELS = {
    "principal": "Run-as principal",
    "instances": "Instances (accounts, tenants)",
    "window": "Query time window",
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
    ipe = dict(source.ipe or {})
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
        else:
            text = fmt_value(value)
        facts.append((IPE_LABELS.get(key, key.replace("_", " ").capitalize()), text))
    return {"facts": facts, "requests": requests, "tables": tables}


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


def render_report(evidence: Evidence) -> str:
    controls = [{"result": c, "excluded": _excluded_rows(c.excluded)} for c in evidence.controls]
    return environment().get_template(TEMPLATE).render(
        ev=evidence,
        css=stylesheet(),
        controls=controls,
        ipe={s.name: _ipe(s) for s in evidence.sources},
        files=population_files(evidence),
        policy=[(POLICY_LABELS.get(k, k), k, fmt_value(v))
                for k, v in evidence.policy.items()],
        gaps=[(s, g) for s in evidence.sources for g in s.gaps],
        n_exceptions=len(evidence.exceptions),
    )
