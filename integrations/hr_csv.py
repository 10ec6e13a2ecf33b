"""HR records from a CSV export (DESIGN §3 ``people``, §8 ``[hr]``, §9 "HR").

The export's columns differ per HRIS vendor, so ``[hr.columns]`` maps canonical fields to export
columns (a field left unmapped uses an export column of the same name when there is one). Every
cell is read as text with the ``csv`` module: nothing is inferred, and dates are parsed only with
the configured ``date_format`` — never guessed. Each row is one employment; rows sharing an email
are one person's employments (rehires) and must not overlap.

Every problem with the file is an ``InputError`` (exit status 3) naming the file, the line as
numbered in the file (header = line 1) and the export column.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import getpass
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from zoneinfo import ZoneInfo

import pandas as pd

from collector.config import HR_OPTIONAL_COLUMNS, HR_REQUIRED_COLUMNS, HRConfig
from collector.errors import ConfigError, InputError
from collector.integration import CollectContext, CollectResult, Integration, Permission
from collector.schema import SCHEMAS, conform, normalize_email

WORKER_TYPES = ("employee", "contractor")
TERMINATION_MODES = ("end_of_day", "start_of_day")
DEFAULT_OPTIONS = {"delimiter": ",", "encoding": "utf-8-sig", "aliases_separator": ";"}
RAW_REQUEST = "hr.csv"


@dataclass(frozen=True)
class Row:
    """One data row of the export: its first line in the file and its cells, as read."""

    line: int
    cells: list[str]


def termination_effective(day: dt.date | None, timezone: str | ZoneInfo,
                          mode: str = "end_of_day") -> pd.Timestamp | None:
    """The UTC instant a termination on local calendar date ``day`` takes effect (DESIGN §9).

    ``end_of_day``: 00:00 of the next local day; ``start_of_day``: 00:00 of ``day``. Local
    midnight is resolved with zoneinfo (``fold=0``), so DST changes are honoured; where a zone
    skips midnight, the result is the first instant of that local day.
    """
    if day is None:
        return None
    if mode not in TERMINATION_MODES:
        raise ValueError(f"termination_effective must be one of {TERMINATION_MODES}, got {mode!r}")
    tz = timezone if isinstance(timezone, ZoneInfo) else ZoneInfo(timezone)
    local_day = day + dt.timedelta(days=1) if mode == "end_of_day" else day
    local_midnight = dt.datetime.combine(local_day, dt.time(0, 0), tzinfo=tz)
    return pd.Timestamp(local_midnight.astimezone(dt.timezone.utc))


def _principal() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no login name and no passwd entry (some containers)
        return str(os.getuid()) if hasattr(os, "getuid") else None


def _is_email(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(at and local and domain)


class CsvHR(Integration):
    """The ``[hr]`` source of type ``csv``: one row per employment."""

    type = "csv"
    title = "HR export (CSV)"
    tables = ("people",)
    permissions = (
        Permission(system="filesystem", name="read <path>",
                   why="read the HR export named by [hr] path (people, hire and termination "
                       "dates); nothing else is read or written"),
    )
    log_retention_days = None
    options = {
        "delimiter": "field separator, one character (default ',')",
        "encoding": "text encoding of the export (default 'utf-8-sig': a UTF-8 BOM is accepted)",
        "aliases_separator": "separator between the addresses in the aliases column "
                             "(default ';')",
    }

    # -- configuration -------------------------------------------------------------------------

    @classmethod
    def validate(cls, source) -> None:
        if isinstance(source, HRConfig):
            cls.resolve_options(source)
            return
        raise ConfigError(f"type '{cls.type}' reads the HR export: configure it in [hr], "
                          "not in [[sources]]", file=getattr(source, "file", None),
                          section=getattr(source, "section", None), key="type")

    @classmethod
    def resolve_options(cls, config: HRConfig) -> dict[str, str]:
        """This integration's own options, defaults filled in, checked (the rest of [hr] is
        checked by the configuration loader); raises ``ConfigError``."""
        def error(key, message):
            return ConfigError(message, file=config.file, section="hr", key=key)

        for key in config.options:
            if key not in cls.options:
                raise error(key, f"unknown option for type '{cls.type}' (known: "
                                 f"{', '.join(sorted(cls.options))})")
        opts = {**DEFAULT_OPTIONS, **config.options}
        if not isinstance(opts["delimiter"], str) or len(opts["delimiter"]) != 1:
            raise error("delimiter", f"must be a single character, got {opts['delimiter']!r}")
        try:
            codecs.lookup(str(opts["encoding"]))
        except LookupError:
            raise error("encoding", f"unknown encoding {opts['encoding']!r}") from None
        if not isinstance(opts["aliases_separator"], str) or not opts["aliases_separator"]:
            raise error("aliases_separator", "must be a non-empty string")
        return {k: str(v) for k, v in opts.items()}

    # -- collection ----------------------------------------------------------------------------

    def collect(self, ctx: CollectContext) -> CollectResult:
        config = ctx.config
        if not isinstance(config, HRConfig):
            self.validate(config)  # raises: csv is an [hr] type
        opts = self.resolve_options(config)
        path = Path(config.path)
        file = str(path)

        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError("HR export not found (check [hr] path; relative paths are relative "
                             "to the configuration file)", file=file) from None
        except OSError as exc:
            raise InputError(f"cannot read the HR export: {exc.strerror or exc}",
                             file=file) from None
        sha256 = hashlib.sha256(data).hexdigest()
        header_line, header, rows = read_csv(data, file=file, encoding=opts["encoding"],
                                             delimiter=opts["delimiter"])
        try:
            mapping, problem = resolve_columns(header, config.columns, file=file,
                                               delimiter=opts["delimiter"]), None
        except InputError as exc:
            mapping, problem = dict(config.columns), exc

        # The exact input goes into the snapshot before it is judged, so that a rejected file
        # is kept as evidence too.
        ctx.raw.page(RAW_REQUEST, {
            "file": path.name, "sha256": sha256, "bytes": len(data),
            "header": {"line": header_line, "cells": header},
            "rows": [{"line": r.line, "cells": r.cells} for r in rows],
        }, endpoint=file, parameters={
            "date_format": config.date_format, "timezone": config.timezone,
            "termination_effective": config.termination_effective,
            "columns": mapping, **opts,
        }, records=len(rows))

        if problem is not None:
            raise problem
        if not rows:
            raise InputError(f"the HR export has a header (line {header_line}) but no data rows",
                             file=file)

        people = build_people(header, rows, mapping, config, file=file,
                              aliases_separator=opts["aliases_separator"])
        ctx.log.info("read %d HR row(s) (%d people) from %s (sha256 %s)", len(people),
                     people["email"].nunique(), file, sha256)
        return CollectResult(tables={"people": people}, principal=_principal(),
                             instances=[file], extra={"sha256": sha256, "rows": len(people)})


# -- reading ------------------------------------------------------------------------------------


def read_csv(data: bytes, *, file: str, encoding: str = "utf-8-sig",
             delimiter: str = ",") -> tuple[int, list[str], list[Row]]:
    """Decode and split a CSV export: ``(header line, header cells, data rows)``.

    Header names are stripped of surrounding whitespace (and of a stray BOM); data cells are
    kept as read. Blank rows (no cell with text) are skipped; line numbers stay those of the file.
    """
    if not data:
        raise InputError("the HR export is empty (0 bytes): expected a header row and one row "
                         "per employment", file=file)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"not valid {encoding} text (byte {data[exc.start:exc.start + 1]!r} at "
                         f"offset {exc.start}); set [hr] encoding to the export's encoding",
                         file=file, row=line) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    header_line = 0
    rows: list[Row] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InputError(f"malformed CSV: {exc}", file=file, row=start) from None
        if not any(cell.strip() for cell in cells):
            continue
        if header is None:
            header = [cell.strip() for cell in cells]
            header[0] = header[0].lstrip("\ufeff").strip()
            header_line = start
            continue
        rows.append(Row(start, cells))
    if header is None:
        raise InputError("the HR export has no header row (the file holds only blank lines)",
                         file=file)
    width = len(header)
    for row in rows:
        extra = row.cells[width:]
        if len(row.cells) < width or any(cell.strip() for cell in extra):
            raise InputError(f"has {len(row.cells)} field(s) but the header (line {header_line}) "
                             f"has {width}; check the delimiter ({delimiter!r}) and quoting",
                             file=file, row=row.line)
    return header_line, header, rows


def resolve_columns(header: list[str], configured: dict[str, str], *, file: str,
                    delimiter: str = ",") -> dict[str, str]:
    """Canonical field → export column, checked against the header; raises ``InputError``.

    A configured column must exist; an unconfigured field uses the export column of the same name
    when there is one. Required fields must resolve.
    """
    present = set(header)
    mapping: dict[str, str] = {}
    missing: list[str] = []
    for field_name in HR_REQUIRED_COLUMNS + HR_OPTIONAL_COLUMNS:
        if field_name in configured:
            column = configured[field_name].strip()
            if column in present:
                mapping[field_name] = column
            else:
                missing.append(f"'{column}' (for {field_name}, from [hr.columns])")
        elif field_name in present:
            mapping[field_name] = field_name
        elif field_name in HR_REQUIRED_COLUMNS:
            missing.append(f"'{field_name}' (required; map it in [hr.columns])")
    if missing:
        has = ", ".join(repr(h) for h in header)
        hint = ""
        if len(header) == 1 and any(sep in header[0] for sep in (",", ";", "\t", "|")):
            hint = f"; is [hr] delimiter right (it is {delimiter!r})?"
        raise InputError(f"missing column(s) {', '.join(missing)}; the file has columns: "
                         f"{has}{hint}", file=file)
    for field_name, column in mapping.items():
        if header.count(column) > 1:
            raise InputError(f"the header names column '{column}' (for {field_name}) "
                             f"{header.count(column)} times; it must be unique", file=file,
                             column=column)
    return mapping


# -- building the people table ------------------------------------------------------------------


def _parse_date(value: str, fmt: str, *, what: str, file: str, line: int,
                column: str) -> dt.date:
    try:
        return dt.datetime.strptime(value, fmt).date()
    except ValueError:
        example = dt.date(2026, 1, 31).strftime(fmt)
        raise InputError(f"{what} {value!r} does not match date_format {fmt!r} (e.g. "
                         f"{example!r}); dates are never guessed", file=file, row=line,
                         column=column) from None


def build_people(header: list[str], rows: Iterable[Row], mapping: dict[str, str],
                 config: HRConfig, *, file: str, aliases_separator: str = ";") -> pd.DataFrame:
    """Turn data rows into the canonical ``people`` table, rejecting anything ambiguous."""
    index = {column: header.index(column) for column in mapping.values()}
    fmt = config.date_format
    tz = ZoneInfo(config.timezone)
    records: list[dict[str, Any]] = []
    lines: list[int] = []

    for row in rows:
        def cell(field_name: str) -> str | None:
            column = mapping.get(field_name)
            if column is None:
                return None
            value = row.cells[index[column]].strip()
            return value or None

        def fail(field_name: str, message: str) -> InputError:
            return InputError(message, file=file, row=row.line, column=mapping[field_name])

        person_id = cell("person_id")
        if person_id is None:
            raise fail("person_id", "missing person_id")
        raw_email = cell("email")
        email = normalize_email(raw_email)
        if email is None:
            raise fail("email", "missing email")
        if not _is_email(email):
            raise fail("email", f"not an email address: {raw_email!r}")

        hired_text = cell("hired_on")
        if hired_text is None:
            raise fail("hired_on", "missing hire date")
        hired_on = _parse_date(hired_text, fmt, what="hire date", file=file, line=row.line,
                               column=mapping["hired_on"])
        terminated_text = cell("terminated_on")
        terminated_on = None
        if terminated_text is not None:
            terminated_on = _parse_date(terminated_text, fmt, what="termination date", file=file,
                                        line=row.line, column=mapping["terminated_on"])
            if terminated_on < hired_on:
                raise fail("terminated_on", f"termination date {terminated_on.isoformat()} is "
                                            f"before the hire date {hired_on.isoformat()}")

        aliases: list[str] = []
        raw_aliases = cell("aliases")
        if raw_aliases is not None:
            for part in raw_aliases.split(aliases_separator):
                alias = normalize_email(part)
                if alias is None or alias == email or alias in aliases:
                    continue
                if not _is_email(alias):
                    raise fail("aliases", f"alias {part.strip()!r} is not an email address "
                                          f"(aliases are separated by {aliases_separator!r})")
                aliases.append(alias)

        raw_manager = cell("manager_email")
        manager_email = normalize_email(raw_manager)
        if manager_email is not None and not _is_email(manager_email):
            raise fail("manager_email", f"not an email address: {raw_manager!r}")

        worker_type = cell("worker_type")
        if worker_type is not None:
            worker_type = worker_type.lower()
            if worker_type not in WORKER_TYPES:
                raise fail("worker_type", f"worker type {cell('worker_type')!r} is neither "
                                          "'employee' nor 'contractor' (case-insensitive)")

        records.append({
            "person_id": person_id, "email": email, "aliases": aliases, "name": cell("name"),
            "department": cell("department"), "title": cell("title"),
            "manager_email": manager_email, "worker_type": worker_type,
            "hired_on": hired_on, "terminated_on": terminated_on,
            "termination_effective": termination_effective(
                terminated_on, tz, config.termination_effective),
            "status": cell("status"),
        })
        lines.append(row.line)

    _check_identities(records, lines, mapping, file=file)

    frame = pd.DataFrame({column: [r[column] for r in records]
                          for column in SCHEMAS["people"]})
    people = conform(frame, "people", source=config.name)
    return people[list(SCHEMAS["people"])]


def _fmt_interval(record: dict) -> str:
    end = (f"terminated {record['terminated_on'].isoformat()}" if record["terminated_on"]
           else "not terminated")
    return f"hired {record['hired_on'].isoformat()}, {end}"


def _check_identities(records: list[dict], lines: list[int], mapping: dict[str, str], *,
                      file: str) -> None:
    """Cross-row rules: employments of one email must not overlap; a person_id belongs to one
    email; an alias must not be another person's email or alias."""
    by_email: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_email.setdefault(record["email"], []).append(i)

    # Overlapping employments of the same email (including two open-ended ones, and duplicates).
    for email, indices in by_email.items():
        for later_pos, j in enumerate(indices):
            for i in indices[:later_pos]:
                a, b = records[i], records[j]
                a_end = a["terminated_on"] or dt.date.max
                b_end = b["terminated_on"] or dt.date.max
                if a["hired_on"] <= b_end and b["hired_on"] <= a_end:
                    raise InputError(
                        f"the employment of {email!r} ({_fmt_interval(b)}) overlaps its "
                        f"employment on line {lines[i]} ({_fmt_interval(a)}): lines {lines[i]} "
                        f"and {lines[j]} share an email, and rows sharing an email must be "
                        "separate, non-overlapping employments (rehires)", file=file,
                        row=lines[j],
                        column=mapping["email"])

    # One person_id, one email.
    id_owner: dict[str, int] = {}
    for j, record in enumerate(records):
        i = id_owner.setdefault(record["person_id"], j)
        if records[i]["email"] != record["email"]:
            raise InputError(
                f"person_id {record['person_id']!r} is used for {record['email']!r} here and for "
                f"{records[i]['email']!r} on line {lines[i]} (lines {lines[i]} and {lines[j]}); "
                "a person_id must belong to one email", file=file, row=lines[j],
                column=mapping["person_id"])

    # Aliases must identify one person only.
    email_line = {email: lines[indices[0]] for email, indices in by_email.items()}
    alias_owner: dict[str, int] = {}
    for j, record in enumerate(records):
        for alias in record["aliases"]:
            if alias in email_line and alias != record["email"]:
                first, second = sorted((lines[j], email_line[alias]))
                raise InputError(
                    f"alias {alias!r} of {record['email']!r} is the email of another person on "
                    f"line {email_line[alias]} (lines {first} and {second}); an ambiguous "
                    "identity is never guessed", file=file, row=lines[j],
                    column=mapping["aliases"])
            i = alias_owner.setdefault(alias, j)
            if records[i]["email"] != record["email"]:
                raise InputError(
                    f"alias {alias!r} is given to {record['email']!r} here and to "
                    f"{records[i]['email']!r} on line {lines[i]} (lines {lines[i]} and "
                    f"{lines[j]}); an ambiguous identity is never guessed", file=file,
                    row=lines[j], column=mapping["aliases"])
