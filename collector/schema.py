"""Canonical tables (DESIGN §3) and ``conform()``, which casts a frame to its fixed schema.

Every time column is a tz-aware UTC ``Timestamp``; every date column holds ``datetime.date``
values (HR dates are local calendar dates, not instants).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError, SourceError

UTC_TS = "datetime64[us, UTC]"

# column → kind: str, bool, ts (UTC instant), date (calendar date), list (list of str)
SCHEMAS: dict[str, dict[str, str]] = {
    "people": {
        "person_id": "str", "email": "str", "aliases": "list", "name": "str",
        "department": "str", "title": "str", "manager_email": "str", "worker_type": "str",
        "hired_on": "date", "terminated_on": "date", "termination_effective": "ts",
        "status": "str",
    },
    "accounts": {
        "source": "str", "instance": "str", "account_id": "str", "login": "str", "email": "str",
        "display_name": "str", "kind": "str", "enabled": "bool", "created_at": "ts",
        "disabled_at": "ts", "last_login_at": "ts", "privileged": "bool", "groups": "list",
        # "never signed in" is a value, distinct from "unknown" (a null last_login_at)
        "never_logged_in": "bool",
        # an HR person_id held by the account (Entra employeeId), the last link tried
        "employee_id": "str",
        # other addresses of the account (Google aliases), tried when the email links no one
        "aliases": "list",
    },
    "events": {
        "source": "str", "instance": "str", "at": "ts", "action": "str", "actor": "str",
        "target_account": "str", "target_email": "str", "outcome": "str", "event_id": "str",
    },
    "tickets": {
        "system": "str", "key": "str", "kind": "str", "subject_email": "str",
        "target_system": "str", "requested_at": "ts", "approved_at": "ts",
        "approver_email": "str", "status": "str", "resolved_at": "ts", "url": "str",
        "summary": "str",
    },
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "people": ("person_id", "email", "hired_on", "terminated_on"),
    "accounts": ("source", "instance", "account_id", "login", "enabled"),
    "events": ("source", "instance", "at", "action", "event_id"),
    "tickets": ("system", "key", "kind"),
}
EVENT_ACTIONS = {"created", "enabled", "disabled", "deleted", "role_changed", "login"}
ACCOUNT_KINDS = {"human", "service", "unknown"}


def empty(table: str) -> pd.DataFrame:
    return conform(pd.DataFrame({c: [] for c in REQUIRED[table]}), table, source="(empty)")


def normalize_email(value) -> str | None:
    """Emails compare case- and whitespace-insensitively."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    text = "".join(str(value).split()).lower()
    return text or None


def normalize_emails(series: pd.Series) -> pd.Series:
    """``normalize_email`` for a whole column (vectorised in Arrow); empty values become None."""
    arr = pa.Array.from_pandas(series.astype("string"))
    out = pc.utf8_lower(pc.replace_substring_regex(arr, r"\s+", ""))
    out = pc.if_else(pc.equal(out, ""), pa.scalar(None, out.type), out)
    return pd.Series(out.to_numpy(zero_copy_only=False), index=series.index, dtype=object)


_TZ_SUFFIX = r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"


def _to_utc(series: pd.Series, column: str, source: str) -> pd.Series:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC").astype(UTC_TS)
    if pd.api.types.is_datetime64_dtype(series.dtype) and series.notna().any():
        raise SourceError(source, f"column '{column}' holds naive timestamps; times must be "
                                  "tz-aware")
    values = series.astype(object).where(series.notna(), None)
    present = values.dropna()
    if present.empty:
        return pd.Series(pd.NaT, index=series.index, dtype=UTC_TS)
    if all(isinstance(v, str) for v in present):
        naive = ~present.str.strip().str.contains(_TZ_SUFFIX, regex=True)
        parsed_kwargs = {"format": "ISO8601"}
    else:
        naive = present.map(lambda v: isinstance(v, str) and not pd.Timestamp(v).tzinfo
                            or getattr(v, "tzinfo", "n/a") is None)
        parsed_kwargs = {}
    if naive.any():
        raise SourceError(source, f"column '{column}' holds a naive timestamp "
                                  f"{present[naive].iloc[0]!r}; times must be tz-aware")
    try:
        parsed = pd.to_datetime(values, utc=True, **parsed_kwargs)
    except (ValueError, TypeError) as exc:
        raise SourceError(source, f"column '{column}': unreadable timestamp ({exc})") from None
    return parsed.astype(UTC_TS)


def _to_date(series: pd.Series) -> pd.Series:
    def cast(value):
        if value is None or value is pd.NaT or (isinstance(value, float) and pd.isna(value)):
            return None
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, pd.Timestamp):
            return value.date()
        return dt.date.fromisoformat(str(value))
    return series.map(cast).astype(object)


def _to_list(series: pd.Series) -> pd.Series:
    def cast(value):
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return []
        if isinstance(value, str):
            return [v for v in (p.strip() for p in value.split(";")) if v]
        return [str(v) for v in value]
    return series.map(cast).astype(object)


def conform(df: pd.DataFrame, table: str, *, source: str) -> pd.DataFrame:
    """Cast ``df`` to the canonical ``table`` schema; missing required columns are an error.

    Optional columns that are absent are added empty; unknown columns are dropped.
    """
    schema = SCHEMAS[table]
    missing = [c for c in REQUIRED[table] if c not in df.columns]
    if missing:
        raise SourceError(source, f"table '{table}' lacks required column(s) "
                                  f"{', '.join(missing)}")
    out: dict[str, pd.Series] = {}
    for column, kind in schema.items():
        series = df[column].reset_index(drop=True) if column in df.columns else \
            pd.Series([None] * len(df), dtype=object)
        if kind == "str":
            out[column] = series.astype("string")
        elif kind == "bool":
            out[column] = series.astype("boolean")
        elif kind == "ts":
            out[column] = _to_utc(series, column, source)
        elif kind == "date":
            out[column] = _to_date(series)
        elif kind == "list":
            out[column] = _to_list(series)
    # one frame from finished columns: inserting column by column copies the frame each time
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def require_columns(df: pd.DataFrame, columns, *, file: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"missing required column(s): {', '.join(missing)}", file=file)
