"""Audit periods (DESIGN §9): UTC, half-open [start, end)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import pandas as pd

from .errors import ConfigError

_QUARTER = re.compile(r"^(\d{4})-Q([1-4])$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class Period:
    label: str
    start: pd.Timestamp     # inclusive, UTC midnight
    end: pd.Timestamp       # exclusive, UTC midnight

    def in_progress(self, now: dt.datetime) -> bool:
        return pd.Timestamp(now) < self.end

    def judged_until(self, now: dt.datetime) -> pd.Timestamp:
        """The end of what can be judged: the period end, or now for a period in progress."""
        return min(self.end, pd.Timestamp(now))

    def contains(self, ts) -> bool:
        return ts is not None and not pd.isna(ts) and self.start <= ts < self.end


def _midnight(day: dt.date) -> pd.Timestamp:
    return pd.Timestamp(day.year, day.month, day.day, tz="UTC")


def parse_period(label: str) -> Period:
    try:
        return _parse(label.strip())
    except (ValueError, OverflowError) as exc:   # year 0 or beyond 9999
        raise ConfigError(f"period '{label}': {exc}") from None


def _parse(label: str) -> Period:
    if m := _QUARTER.match(label):
        year, quarter = int(m[1]), int(m[2])
        start = dt.date(year, 3 * quarter - 2, 1)
        end = dt.date(year + 1, 1, 1) if quarter == 4 else dt.date(year, 3 * quarter + 1, 1)
        return Period(label, _midnight(start), _midnight(end))
    if m := _MONTH.match(label):
        year, month = int(m[1]), int(m[2])
        if not 1 <= month <= 12:
            raise ConfigError(f"period '{label}': month must be 01..12")
        end = dt.date(year + 1, 1, 1) if month == 12 else dt.date(year, month + 1, 1)
        return Period(label, _midnight(dt.date(year, month, 1)), _midnight(end))
    if m := _RANGE.match(label):
        try:
            first, last = dt.date.fromisoformat(m[1]), dt.date.fromisoformat(m[2])
        except ValueError as exc:
            raise ConfigError(f"period '{label}': {exc}") from None
        if last < first:
            raise ConfigError(f"period '{label}': the end date is before the start date")
        return Period(label, _midnight(first), _midnight(last + dt.timedelta(days=1)))
    raise ConfigError(f"period '{label}' is not understood; use 2026-Q1, 2026-03 or "
                      "2026-01-01..2026-03-31")


def current_quarter(now: dt.datetime) -> Period:
    now = pd.Timestamp(now).tz_convert("UTC")
    return parse_period(f"{now.year}-Q{(now.month - 1) // 3 + 1}")
