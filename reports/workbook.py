"""workbook.xlsx: the populations, samples and exceptions of the pack as one spreadsheet.

Sheets: "About" (the pack, the period, how to read the times, one line per sheet), "exceptions"
(every exception of every control), "samples" (the sampled rows of each population), then one
sheet per population with the rows of ``populations/<name>.csv`` in the same order. Every data
sheet has a frozen header row, an autofilter over its range and column widths from its content.

Cells:
- times are real Excel date-times in UTC without a time zone (Excel has none); the header of
  such a column says "(UTC)" and the About sheet says so too. Dates are dates, numbers numbers,
  booleans booleans;
- every text cell is text: a text starting with ``= + - @``, tab, CR, NUL (or ``#``, which could
  read as an error value) is an inline string with Excel's quote prefix, never a formula
  (CWE-1236). The writer (``reports.xlsx``) has no way to write a formula at all;
- characters XML cannot carry are replaced by U+FFFD; text beyond Excel's 32,767-character cell
  limit is cut and marked.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .tables import FORMULA_PREFIXES
from .xlsx import (EXCEL_EPOCH, MAX_ROWS, STYLE_DATE, STYLE_DATETIME, SheetSpec, XlsxWriter,
                   bool_fragment, excel_serial, number_fragment, text_fragment)

_RISKY = FORMULA_PREFIXES + ("#",)
_EPOCH_NS = np.datetime64(EXCEL_EPOCH, "ns")


def _text(value: str) -> str:
    return text_fragment(value, quoted=value.startswith(_RISKY))


def cell(value: Any) -> str | None:
    """One cell fragment from an arbitrary Python value (None: an empty cell)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, bool):
        return bool_fragment(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return None
        return number_fragment(value)
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        ts = pd.Timestamp(value)
        if ts.tzinfo is None:     # a naive time is not a time the pack produces; keep as text
            return _text(ts.isoformat())
        return number_fragment(excel_serial(ts.tz_convert("UTC").to_pydatetime(warn=False)),
                               STYLE_DATETIME)
    if isinstance(value, dt.date):
        return number_fragment(excel_serial(value), STYLE_DATE)
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return _text("; ".join(str(v) for v in value))
    if isinstance(value, dict):
        return _text(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False))
    return _text(str(value))


def _column(series: pd.Series) -> tuple[list[str | None], bool, int]:
    """A column as cell fragments (vectorised by dtype); whether it holds UTC times; its width."""
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        values = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
        days = (values - _EPOCH_NS) / np.timedelta64(1, "D")
        frags = [None if math.isnan(d) else number_fragment(float(d), STYLE_DATETIME)
                 for d in days.tolist()]
        return frags, True, 19
    if pd.api.types.is_bool_dtype(dtype):
        frags = [None if v is None or v is pd.NA else bool_fragment(bool(v))
                 for v in series.astype(object).tolist()]
        return frags, False, 5
    if pd.api.types.is_numeric_dtype(dtype):
        out = []
        for v in series.astype(object).tolist():
            out.append(None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
                       else number_fragment(v))
        return out, False, 10
    values = series.astype(object).tolist()
    if isinstance(dtype, pd.StringDtype) or all(isinstance(v, str) or v is None
                                                for v in values[:200]):
        memo: dict[str, str | None] = {}
        frags = []
        for v in values:
            if isinstance(v, str):
                frag = memo.get(v)
                if frag is None:
                    frag = memo[v] = text_fragment(v, v.startswith(_RISKY))
                frags.append(frag)
            else:
                frags.append(cell(v))
        width = max((len(v) for v in values[:500] if isinstance(v, str)), default=0)
        return frags, False, width
    frags = [cell(v) for v in values]
    times = any(isinstance(v, (pd.Timestamp, dt.datetime)) and pd.Timestamp(v).tzinfo
                for v in values[:200])
    width = max((len(str(v)) for v in values[:500] if v is not None), default=0)
    return frags, bool(times), min(width, 19) if times else width


def _width(header: str, content: int) -> float:
    return float(min(max(len(header) + 2, content + 2, 8), 60))


def write_frame(xlsx: XlsxWriter, title: str, df: pd.DataFrame) -> int:
    cols, names, widths = [], [], []
    for c in df.columns:
        frags, times, width = _column(df[c])
        name = str(c) + (" (UTC)" if times else "")
        cols.append(frags)
        names.append(name)
        widths.append(_width(name, width))
    n = min(len(df), MAX_ROWS - 1)
    rows = (tuple(col[r] for col in cols) for r in range(n))
    xlsx.add_sheet(SheetSpec(title, names, widths), rows)
    return n


def write_rows(xlsx: XlsxWriter, title: str, columns: Sequence[str],
               rows: Sequence[Sequence[Any]], wrap: Sequence[int] = ()) -> int:
    frame_rows = [[cell(v) for v in row] for row in rows]
    widths = []
    for i, name in enumerate(columns):
        content = 0
        for row in rows[:500]:
            v = row[i]
            if v is None:
                continue
            content = max(content, 19 if isinstance(v, (dt.datetime, dt.date)) else len(str(v)))
        widths.append(_width(name, content))
    spec = SheetSpec(title, list(columns), widths, wrap_columns=set(wrap))
    xlsx.add_sheet(spec, frame_rows)
    return len(frame_rows)


def write_workbook(path: Path, *, title: str, about: list[tuple[str, Any]],
                   populations: dict[str, tuple[str, pd.DataFrame]],
                   exception_columns: Sequence[str], exception_rows: list[Sequence[Any]],
                   sample_columns: Sequence[str], sample_rows: list[Sequence[Any]]) -> None:
    """``populations``: name → (sheet title, frame), in sheet order."""
    xlsx = XlsxWriter(path)
    sheets = [("exceptions", "every exception of every control", len(exception_rows)),
              ("samples", "the sampled rows of each population", len(sample_rows))]
    sheets += [(t, f"population {name} (populations/{name}.csv)", len(df))
               for name, (t, df) in populations.items()]
    lines = list(about) + [(f"Sheet '{t}'", f"{what}: {n:,} rows") for t, what, n in sheets]
    about_rows = [(label, value) for label, value in lines]
    spec = SheetSpec("About", ["Item", "Value"], [36.0, 110.0], frozen=False, autofilter=False,
                     wrap_columns={1})
    xlsx.add_sheet(spec, ([cell(label), cell(value)] for label, value in about_rows))
    write_rows(xlsx, "exceptions", exception_columns, exception_rows)
    write_rows(xlsx, "samples", sample_columns, sample_rows)
    for name, (sheet, df) in populations.items():
        write_frame(xlsx, sheet, df)
    xlsx.close(title=title)


_BAD_SHEET_CHARS = "[]:*?/\\"


def sheet_title(name: str, taken: set[str]) -> str:
    """An Excel sheet name for ``name``: at most 31 characters, none of []:*?/\\, unique."""
    base = "".join("_" if ch in _BAD_SHEET_CHARS else ch for ch in name).strip("'")[:31]
    base = base or "sheet"
    title, n = base, 2
    while title.lower() in taken:
        suffix = f" ({n})"
        title, n = base[:31 - len(suffix)] + suffix, n + 1
    taken.add(title.lower())
    return title
