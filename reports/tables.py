"""CSV annex files: exceptions.csv and populations/*.csv.

Every text cell goes through ``neutralise``: identity data (display names, ticket summaries) is
attacker-controlled, and a cell starting with ``=`` is a live formula once the auditor opens the
file in a spreadsheet (CWE-1236).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from collector.results import Finding
from collector.store import iso

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\0")

# Finding's own field order: adding a field to Finding appends a column, never reorders.
EXCEPTION_COLUMNS = tuple(f.name for f in dataclasses.fields(Finding))


def neutralise(text: str) -> str:
    """Make a spreadsheet read ``text`` as text, never as a formula."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def _missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def cell(value: Any) -> str | int | float:
    """One CSV cell: numbers stay numbers, times are ISO 8601 UTC, everything else is text."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        return iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple, set, frozenset)):
        return neutralise("; ".join(str(cell(v)) for v in value))
    if isinstance(value, dict):
        return neutralise(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False))
    return neutralise(str(value))


def write_rows(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([cell(c) for c in columns])
        for row in rows:
            writer.writerow([cell(v) for v in row])


def _text_column(series: pd.Series) -> pd.Series:
    """A column as CSV text, vectorised by kind; the same cells ``cell`` would write."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        text = series.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ") \
            .str.replace(".000000Z", "Z", regex=False)
        return text.fillna("").astype(object)
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.map({True: "true", False: "false"}).fillna("").astype(object)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series            # the CSV writer prints numbers; NaN becomes empty
    if isinstance(series.dtype, pd.StringDtype):
        text = series.fillna("")
        risky = text.str.startswith(FORMULA_PREFIXES)
        return text.where(~risky, "'" + text).astype(object)
    return series.map(cell).astype(object)


def write_frame(path: Path, df: pd.DataFrame) -> None:
    """A full population, one row per item, columns as the control produced them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = pd.DataFrame({str(c): _text_column(df[c]) for c in df.columns}, index=df.index)
    text.columns = [cell(str(c)) for c in df.columns]
    text.to_csv(path, index=False, lineterminator="\r\n", encoding="utf-8")


def write_exceptions(path: Path, findings: Iterable[Finding]) -> None:
    write_rows(path, EXCEPTION_COLUMNS,
               ([getattr(f, c) for c in EXCEPTION_COLUMNS] for f in findings))
