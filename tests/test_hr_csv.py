"""HR integration ``csv`` (integrations/hr_csv.py): mapping, dates, identities, errors."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from collector.config import HRConfig
from collector.errors import ConfigError, InputError
from collector.integration import CollectContext
from collector.registry import get_integration
from collector.schema import SCHEMAS
from collector.store import RawRecorder, SnapshotStore
from integrations.hr_csv import CsvHR, termination_effective

DATA = Path(__file__).parent / "data" / "hr"
UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 20, 2, 0, tzinfo=UTC)
CANONICAL = "person_id,email,hired_on,terminated_on"
VENDOR_COLUMNS = {
    "person_id": "Employee ID", "email": "Work Email", "name": "Full Name",
    "department": "Dept", "title": "Job Title", "manager_email": "Manager Email",
    "worker_type": "Worker Type", "hired_on": "Hire Date", "terminated_on": "Termination Date",
    "aliases": "Email Aliases", "status": "Employment Status",
}


def hr_config(path: Path, *, date_format: str = "%Y-%m-%d", timezone: str = "America/New_York",
              effective: str = "end_of_day", columns: dict | None = None,
              **options) -> HRConfig:
    return HRConfig(type="csv", path=path, date_format=date_format, timezone=timezone,
                    termination_effective=effective, columns=columns or {}, options=options)


def make_ctx(config: HRConfig, tmp_path: Path) -> CollectContext:
    return CollectContext(name="hr", config=config, now=NOW,
                          events_since=NOW - dt.timedelta(days=90), events_until=NOW,
                          raw=RawRecorder(tmp_path / "raw"), log=logging.getLogger("test.hr"))


def collect(config: HRConfig, tmp_path: Path):
    ctx = make_ctx(config, tmp_path)
    try:
        return CsvHR().collect(ctx), ctx
    finally:
        ctx.raw.close()


def people_of(config: HRConfig, tmp_path: Path) -> pd.DataFrame:
    return collect(config, tmp_path)[0].tables["people"]


def write(tmp_path: Path, text: str, name: str = "hr.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(config: HRConfig, tmp_path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        collect(config, tmp_path)
    assert info.value.exit_code == 3
    return info.value


def row(df: pd.DataFrame, email: str) -> dict:
    match = df[df["email"] == email]
    assert len(match) == 1, f"{email}: {len(match)} rows"
    return match.iloc[0].to_dict()


# -- registration and public surface -----------------------------------------------------------


def test_registered_and_declares_surface():
    assert get_integration("csv") is CsvHR
    assert CsvHR.type == "csv"
    assert CsvHR.tables == ("people",)
    assert [(p.system, p.name) for p in CsvHR.permissions] == [("filesystem", "read <path>")]
    assert set(CsvHR.options) == {"delimiter", "encoding", "aliases_separator"}


# -- column mapping ----------------------------------------------------------------------------


def test_column_mapping_from_config(tmp_path):
    config = hr_config(DATA / "vendor_export.csv", date_format="%m/%d/%Y",
                       columns=VENDOR_COLUMNS)
    result, ctx = collect(config, tmp_path)
    people = result.tables["people"]
    assert list(people.columns) == list(SCHEMAS["people"])
    assert len(people) == 6
    alice = row(people, "alice@corp.com")
    assert alice["person_id"] == "E001"
    assert alice["name"] == "Alice Example"
    assert alice["department"] == "Engineering"
    assert alice["title"] == "Staff Engineer"
    assert alice["manager_email"] == "carol@corp.com"
    assert alice["worker_type"] == "employee"
    assert alice["status"] == "Active"
    assert alice["hired_on"] == dt.date(2024, 1, 15)
    assert alice["terminated_on"] is None
    assert pd.isna(alice["termination_effective"])
    dave = row(people, "dave@corp.com")
    assert dave["name"] == 'Dave "DJ" Example'
    assert dave["terminated_on"] == dt.date(2026, 1, 16)

    assert result.instances == [str(DATA / "vendor_export.csv")]
    assert result.extra["rows"] == 6
    assert len(result.extra["sha256"]) == 64
    assert result.principal

    # the exact input is recorded as a raw page, with the resolved mapping
    request = ctx.raw.requests["hr.csv"]
    assert request["endpoint"] == str(DATA / "vendor_export.csv")
    assert request["records"] == 6
    assert request["parameters"]["date_format"] == "%m/%d/%Y"
    assert request["parameters"]["timezone"] == "America/New_York"
    assert request["parameters"]["columns"]["email"] == "Work Email"
    with gzip.open(tmp_path / "raw" / "hr.csv.jsonl.gz") as fh:
        body = json.loads(fh.readline())["body"]
    assert body["sha256"] == result.extra["sha256"]
    assert body["rows"][0] == {"line": 2, "cells": [
        "E001", " Alice@Corp.COM ", "Alice Example", "Engineering", "Staff Engineer",
        "carol@corp.com", "Employee", "01/15/2024", "",
        "alice.example@corp.com; A.Example@CORP.com ", "Active"]}


def test_unmapped_fields_use_same_named_columns(tmp_path):
    path = write(tmp_path, "Badge,email,hired_on,terminated_on,department,status\n"
                           "B-7,pat@corp.com,2025-01-02,,Legal,active\n")
    people = people_of(hr_config(path, columns={"person_id": "Badge"}), tmp_path)
    pat = row(people, "pat@corp.com")
    assert pat["person_id"] == "B-7"
    assert pat["department"] == "Legal"
    assert pat["status"] == "active"
    assert pat["name"] is None or pd.isna(pat["name"])  # column absent → null


def test_status_absent_is_null_not_derived(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2024-01-01,2025-01-01\n")
    assert pd.isna(people_of(hr_config(path), tmp_path)["status"].iloc[0])


# -- dates: explicit format, never guessed -----------------------------------------------------


def test_date_format_is_explicit_never_guessed(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,03/04/2026,\n")
    us = people_of(hr_config(path, date_format="%m/%d/%Y"), tmp_path / "us")
    eu = people_of(hr_config(path, date_format="%d/%m/%Y"), tmp_path / "eu")
    assert us["hired_on"].iloc[0] == dt.date(2026, 3, 4)
    assert eu["hired_on"].iloc[0] == dt.date(2026, 4, 3)
    assert isinstance(us["hired_on"].iloc[0], dt.date)
    assert not isinstance(us["hired_on"].iloc[0], dt.datetime)


def test_unparseable_date_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "ID,Mail,Start,End\n"
                           "P1,a@corp.com,2024-01-15,\n"
                           "P2,b@corp.com,2024-02-30,\n", name="acme-hr.csv")
    config = hr_config(path, columns={"person_id": "ID", "email": "Mail", "hired_on": "Start",
                                      "terminated_on": "End"})
    err = error_of(config, tmp_path)
    message = str(err)
    assert "acme-hr.csv" in message
    assert "line 3" in message
    assert "column 'Start'" in message
    assert "'2024-02-30'" in message
    assert "'%Y-%m-%d'" in message
    assert (err.row, err.column) == (3, "Start")


def test_date_in_other_format_is_rejected_not_guessed(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2024-01-15,\nP2,b@corp.com,"
                           "2024-01-15,01/31/2026\n")
    err = error_of(hr_config(path), tmp_path)
    assert (err.row, err.column) == (3, "terminated_on")
    assert "'01/31/2026'" in str(err)


# -- structure errors --------------------------------------------------------------------------


def test_missing_required_column_lists_file_columns(tmp_path):
    path = write(tmp_path, "Employee ID,Email,Hire Date\nE1,a@corp.com,2024-01-01\n")
    config = hr_config(path, columns={"person_id": "Employee ID", "email": "Work Email",
                                      "hired_on": "Hire Date"})
    message = str(error_of(config, tmp_path))
    assert str(path) in message
    assert "'Work Email' (for email, from [hr.columns])" in message
    assert "'terminated_on' (required" in message
    assert "the file has columns: 'Employee ID', 'Email', 'Hire Date'" in message


def test_rejected_file_is_still_recorded_raw(tmp_path):
    path = write(tmp_path, "Employee ID,Email\nE1,a@corp.com\n")
    config = hr_config(path)
    ctx = make_ctx(config, tmp_path)
    with pytest.raises(InputError, match="missing column"):
        CsvHR().collect(ctx)
    ctx.raw.close()
    assert ctx.raw.requests["hr.csv"]["records"] == 1
    with gzip.open(tmp_path / "raw" / "hr.csv.jsonl.gz") as fh:
        body = json.loads(fh.readline())["body"]
    assert body["header"] == {"line": 1, "cells": ["Employee ID", "Email"]}
    assert body["rows"] == [{"line": 2, "cells": ["E1", "a@corp.com"]}]


def test_configured_optional_column_must_exist(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2024-01-01,\n")
    message = str(error_of(hr_config(path, columns={"worker_type": "Type"}), tmp_path))
    assert "'Type' (for worker_type" in message


def test_empty_file(tmp_path):
    err = error_of(hr_config(DATA / "empty.csv"), tmp_path)
    assert "empty.csv" in str(err) and "empty (0 bytes)" in str(err)


def test_header_only_file(tmp_path):
    err = error_of(hr_config(DATA / "header_only.csv"), tmp_path)
    assert "header_only.csv" in str(err)
    assert "no data rows" in str(err)


def test_missing_file(tmp_path):
    err = error_of(hr_config(tmp_path / "nope.csv"), tmp_path)
    assert "nope.csv" in str(err) and "not found" in str(err)


def test_ragged_row_is_rejected(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2024-01-01,,surplus\n")
    err = error_of(hr_config(path), tmp_path)
    assert err.row == 2 and "5 field(s)" in str(err)


def test_wrong_delimiter_hint_and_delimiter_option(tmp_path):
    path = write(tmp_path, "person_id;email;hired_on;terminated_on\nP1;a@corp.com;2024-01-01;\n")
    assert "delimiter" in str(error_of(hr_config(path), tmp_path))
    people = people_of(hr_config(path, delimiter=";"), tmp_path / "ok")
    assert people["email"].tolist() == ["a@corp.com"]


def test_unknown_option_is_config_error(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2024-01-01,\n")
    with pytest.raises(ConfigError, match="sheet"):
        collect(hr_config(path, sheet="x"), tmp_path)


def test_blank_lines_skipped_line_numbers_kept(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\n\nP1,a@corp.com,2024-01-01,\n,,,\nP2,,2024-01-01,\n")
    err = error_of(hr_config(path), tmp_path)
    assert (err.row, err.column) == (5, "email")
    assert "missing email" in str(err)


def test_missing_person_id_and_hire_date(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\n,a@corp.com,2024-01-01,\n")
    assert "missing person_id" in str(error_of(hr_config(path), tmp_path))
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,,\n")
    err = error_of(hr_config(path), tmp_path)
    assert (err.row, err.column) == (2, "hired_on") and "missing hire date" in str(err)


def test_termination_before_hire(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2024-05-01,2024-04-30\n")
    err = error_of(hr_config(path), tmp_path)
    assert (err.row, err.column) == (2, "terminated_on")
    assert "before the hire date" in str(err)


def test_utf8_bom_does_not_pollute_first_column(tmp_path):
    assert (DATA / "bom.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    people = people_of(hr_config(DATA / "bom.csv"), tmp_path)
    assert people["person_id"].tolist() == ["P1", "P2"]
    assert people["terminated_on"].tolist() == [None, dt.date(2026, 3, 13)]


def test_bom_with_plain_utf8_encoding_still_maps(tmp_path):
    people = people_of(hr_config(DATA / "bom.csv", encoding="utf-8"), tmp_path)
    assert people["person_id"].tolist() == ["P1", "P2"]


def test_undecodable_bytes_name_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(f"{CANONICAL}\nP1,a@corp.com,2024-01-01,\n".encode()
                     + "P2,ren\u00e9@corp.com,2024-01-01,\n".encode("latin-1"))
    err = error_of(hr_config(path), tmp_path)
    assert err.row == 3 and "encoding" in str(err)
    people = people_of(hr_config(path, encoding="latin-1"), tmp_path / "ok")
    assert people["email"].tolist() == ["a@corp.com", "ren\u00e9@corp.com"]


# -- emails and identities ---------------------------------------------------------------------


def test_email_normalised(tmp_path):
    path = write(tmp_path, f"{CANONICAL},manager_email\nP1, Alice@Corp.COM ,2024-01-01,,"
                           " Boss @CORP.com\n")
    people = people_of(hr_config(path), tmp_path)
    assert people["email"].tolist() == ["alice@corp.com"]
    assert people["manager_email"].tolist() == ["boss@corp.com"]


def test_aliases_split_and_normalised(tmp_path):
    config = hr_config(DATA / "vendor_export.csv", date_format="%m/%d/%Y",
                       columns=VENDOR_COLUMNS)
    people = people_of(config, tmp_path)
    assert row(people, "alice@corp.com")["aliases"] == ["alice.example@corp.com",
                                                        "a.example@corp.com"]
    assert row(people, "carol@corp.com")["aliases"] == []


def test_aliases_separator_option(tmp_path):
    path = write(tmp_path, f"{CANONICAL},aliases\nP1,a@corp.com,2024-01-01,,"
                           "\"X@corp.com | y@Corp.com\"\n")
    people = people_of(hr_config(path, aliases_separator="|"), tmp_path)
    assert people["aliases"].iloc[0] == ["x@corp.com", "y@corp.com"]


def test_alias_equal_to_another_persons_email_is_rejected(tmp_path):
    path = write(tmp_path, f"{CANONICAL},aliases\n"
                           "P1,bob@corp.com,2024-01-01,,\n"
                           "P2,alice@corp.com,2024-01-01,,a@corp.com; Bob@corp.com\n")
    err = error_of(hr_config(path), tmp_path)
    assert "'bob@corp.com'" in str(err)
    assert "line 2" in str(err) and "line 3" in str(err)
    assert err.column == "aliases"


def test_same_alias_for_two_people_is_rejected(tmp_path):
    path = write(tmp_path, f"{CANONICAL},aliases\n"
                           "P1,bob@corp.com,2024-01-01,,team@corp.com\n"
                           "P2,alice@corp.com,2024-01-01,,TEAM@corp.com\n")
    err = error_of(hr_config(path), tmp_path)
    assert "'team@corp.com'" in str(err) and "lines 2 and 3" in str(err)


def test_rehire_two_non_overlapping_rows_accepted(tmp_path):
    config = hr_config(DATA / "vendor_export.csv", date_format="%m/%d/%Y",
                       columns=VENDOR_COLUMNS)
    people = people_of(config, tmp_path)
    erin = people[people["email"] == "erin@corp.com"]
    assert erin["person_id"].tolist() == ["E005", "E005"]
    assert erin["hired_on"].tolist() == [dt.date(2022, 5, 4), dt.date(2026, 2, 2)]
    assert erin["terminated_on"].tolist() == [dt.date(2024, 12, 31), None]
    assert erin["title"].tolist() == ["Analyst", "Senior Analyst"]


def test_rehire_with_new_person_id_accepted(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2020-01-01,2021-01-01\n"
                           "P9,A@corp.com,2022-01-01,\n")
    assert people_of(hr_config(path), tmp_path)["person_id"].tolist() == ["P1", "P9"]


def test_overlapping_employments_rejected_naming_both_lines(tmp_path):
    err = error_of(hr_config(DATA / "overlap.csv"), tmp_path)
    message = str(err)
    assert "overlap.csv" in message
    assert "'frank@corp.com'" in message
    assert "lines 2 and 4" in message
    assert err.row == 4


def test_two_open_ended_rows_overlap(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2020-01-01,\n"
                           "P2,b@corp.com,2020-01-01,\nP1,a@corp.com,2023-01-01,\n")
    assert "lines 2 and 4" in str(error_of(hr_config(path), tmp_path))


def test_exact_duplicate_row_rejected(tmp_path):
    line = "P1,a@corp.com,2020-01-01,2021-01-01\n"
    path = write(tmp_path, f"{CANONICAL}\n{line}{line}")
    assert "lines 2 and 3" in str(error_of(hr_config(path), tmp_path))


def test_person_id_for_two_emails_rejected(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2020-01-01,\nP1,b@corp.com,2020-01-01,\n")
    err = error_of(hr_config(path), tmp_path)
    assert "person_id 'P1'" in str(err) and "lines 2 and 3" in str(err)
    assert err.column == "person_id"


def test_not_an_email_rejected(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,n/a,2020-01-01,\n")
    err = error_of(hr_config(path), tmp_path)
    assert (err.row, err.column) == (2, "email") and "'n/a'" in str(err)


# -- worker type ------------------------------------------------------------------------------


def test_contractor_worker_type(tmp_path):
    config = hr_config(DATA / "vendor_export.csv", date_format="%m/%d/%Y",
                       columns=VENDOR_COLUMNS)
    people = people_of(config, tmp_path)
    assert row(people, "bob@corp.com")["worker_type"] == "contractor"  # "CONTRACTOR" in file
    assert row(people, "carol@corp.com")["worker_type"] == "employee"


def test_bad_worker_type(tmp_path):
    path = write(tmp_path, f"{CANONICAL},Kind\nP1,a@corp.com,2020-01-01,,employee\n"
                           "P2,b@corp.com,2020-01-01,,Intern\n")
    err = error_of(hr_config(path, columns={"worker_type": "Kind"}), tmp_path)
    assert (err.row, err.column) == (3, "Kind")
    assert "'Intern'" in str(err)


# -- termination_effective ---------------------------------------------------------------------


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


def test_termination_effective_end_vs_start_of_day_new_york(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\n"
                           "P1,fri@corp.com,2025-01-01,2026-03-13\n"     # Friday, EDT (UTC-4)
                           "P2,win@corp.com,2025-01-01,2026-01-16\n"     # winter, EST (UTC-5)
                           "P3,dst@corp.com,2025-01-01,2026-03-07\n")    # Saturday before DST
    end = people_of(hr_config(path, effective="end_of_day"), tmp_path / "end")
    start = people_of(hr_config(path, effective="start_of_day"), tmp_path / "start")
    assert str(end["termination_effective"].dtype) == "datetime64[us, UTC]"
    assert end["termination_effective"].tolist() == [
        ts("2026-03-14T04:00Z"), ts("2026-01-17T05:00Z"),
        ts("2026-03-08T05:00Z")]  # 00:00 EST on the day DST begins (02:00)
    assert start["termination_effective"].tolist() == [
        ts("2026-03-13T04:00Z"), ts("2026-01-16T05:00Z"), ts("2026-03-07T05:00Z")]
    assert end["terminated_on"].tolist() == start["terminated_on"].tolist()


def test_termination_effective_follows_timezone(tmp_path):
    path = write(tmp_path, f"{CANONICAL}\nP1,a@corp.com,2025-01-01,2026-03-13\n")
    tokyo = people_of(hr_config(path, timezone="Asia/Tokyo"), tmp_path)
    assert tokyo["termination_effective"].iloc[0] == ts("2026-03-13T15:00Z")


def test_termination_effective_helper():
    assert termination_effective(None, "UTC") is None
    assert termination_effective(dt.date(2026, 11, 1), "America/New_York",
                                 "end_of_day") == ts("2026-11-02T05:00Z")  # day DST ends
    assert termination_effective(dt.date(2026, 11, 1), "America/New_York",
                                 "start_of_day") == ts("2026-11-01T04:00Z")
    # Havana skips 00:00-01:00 when DST starts: the day begins at 01:00 CDT
    assert termination_effective(dt.date(2026, 3, 8), "America/Havana",
                                 "start_of_day") == ts("2026-03-08T05:00Z")


# -- snapshot round trip -----------------------------------------------------------------------


def test_people_round_trip_through_snapshot_store(tmp_path):
    config = hr_config(DATA / "vendor_export.csv", date_format="%m/%d/%Y",
                       columns=VENDOR_COLUMNS)
    result, _ = collect(config, tmp_path)
    people = result.tables["people"]
    writer = SnapshotStore(tmp_path / "store").begin("hr", "csv", NOW)
    writer.write_table("people", people)
    snapshot = writer.commit(finished_at=NOW, principal=result.principal,
                             instances=result.instances, window=None, extra=result.extra)
    assert snapshot.verify() == []
    back = snapshot.read("people")
    assert list(back.columns) == list(SCHEMAS["people"])
    assert back["hired_on"].tolist() == people["hired_on"].tolist()
    assert all(type(v) is dt.date for v in back["hired_on"])
    assert back["terminated_on"].tolist() == people["terminated_on"].tolist()
    assert str(back["termination_effective"].dtype) == "datetime64[us, UTC]"
    bob = row(back, "bob@corp.com")
    assert bob["termination_effective"] == ts("2026-03-14T04:00Z")
    assert bob["termination_effective"].tzinfo is not None
    assert row(back, "alice@corp.com")["aliases"] == ["alice.example@corp.com",
                                                      "a.example@corp.com"]
    assert back["email"].tolist() == people["email"].tolist()
    assert snapshot.manifest["tables"]["people"]["records"] == 6
