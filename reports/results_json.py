"""results.json, the machine-readable result (DESIGN §9, schema_version 1)."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from collector.results import RESULTS_SCHEMA_VERSION, ControlResult, Evidence, SourceReport
from collector.store import iso, write_json


def jsonable(value: Any) -> Any:
    """Plain JSON values: ISO 8601 UTC times, no NaN, no numpy scalars."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        return iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _source(s: SourceReport) -> dict[str, Any]:
    return {
        "name": s.name, "type": s.type, "status": s.status, "error": s.error,
        "limitations": list(s.limitations),
        "coverage_start": s.coverage_start, "coverage_end": s.coverage_end,
        "records": {k: int(v) for k, v in s.records.items()},
    }


def _control(c: ControlResult) -> dict[str, Any]:
    return {
        "id": c.id, "title": c.title, "status": c.status, "complete": bool(c.complete),
        "limitations": list(c.limitations), "population": int(c.population_size),
        "exceptions": [f.public() for f in c.exceptions],
    }


def results(evidence: Evidence) -> dict[str, Any]:
    period = evidence.period
    return jsonable({
        "schema_version": RESULTS_SCHEMA_VERSION,
        "generated_at": evidence.generated_at,
        "tool_version": evidence.tool_version,
        "period": {"label": period.label, "start": period.start, "end": period.end,
                   "in_progress": bool(evidence.in_progress)},
        "status": evidence.status,
        "sources": [_source(s) for s in evidence.sources],
        "controls": [_control(c) for c in evidence.controls],
    })


def write_results(path: Path, evidence: Evidence) -> None:
    write_json(path, results(evidence))
