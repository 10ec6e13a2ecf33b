"""Snapshot store (collector/store.py, DESIGN §1, §3, §5): hashed, atomic, fixed-schema snapshots."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector import __version__
from collector.errors import IntegrityError, SourceError
from collector.schema import SCHEMAS
from collector.store import (STALE_TMP_SECONDS, Snapshot, SnapshotStore, arrow_schema,
                             hash_tree)

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 2, 0, 0, tzinfo=UTC)
T1 = dt.datetime(2026, 3, 1, 2, 3, 7, 250000, tzinfo=UTC)


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


def accounts_frame() -> pd.DataFrame:
    return pd.DataFrame([
        {"source": "aws-prod", "instance": "111122223333", "account_id": "AID1", "login": "alice",
         "email": "alice@corp.example", "display_name": "Alice", "kind": "human", "enabled": True,
         "created_at": "2026-01-05T10:00:00+02:00", "disabled_at": None,
         "last_login_at": pd.Timestamp("2026-02-28T23:59:59.5", tz="UTC"), "privileged": True,
         "groups": ["admins", "dev"], "never_logged_in": False},
        {"source": "aws-prod", "instance": "111122223333", "account_id": "AID2", "login": "bob",
         "email": None, "display_name": "Bob", "kind": "service", "enabled": False,
         "created_at": "2025-12-31T23:00:00Z", "disabled_at": "2026-02-01T00:00:00Z",
         "last_login_at": None, "privileged": False, "groups": [], "never_logged_in": True},
    ])


def events_frame() -> pd.DataFrame:
    return pd.DataFrame([
        {"source": "aws-prod", "instance": "111122223333", "at": "2026-02-01T00:00:00Z",
         "action": "disabled", "actor": "admin", "target_account": "bob", "event_id": "e1"},
    ])


PAGES = [
    ("iam.GetAccountAuthorizationDetails", {"UserDetailList": [{"UserName": "alice"}],
                                            "IsTruncated": True, "Marker": "m1"},
     "https://iam.amazonaws.com", {"Filter": ["User", "Group"]}, 1),
    ("iam.GetAccountAuthorizationDetails", {"UserDetailList": [{"UserName": "bob"}],
                                            "IsTruncated": False},
     "https://iam.amazonaws.com", {"Filter": ["User", "Group"]}, 1),
    ("cloudtrail.LookupEvents", {"Events": [{"EventId": "e1", "Note": "ünïcødé ✓"}]},
     "https://cloudtrail.us-east-1.amazonaws.com",
     {"StartTime": "2025-12-01T02:00:00Z", "EndTime": "2026-03-01T02:00:00Z"}, 1),
]


def write_snapshot(store: SnapshotStore, *, started_at=T0, source="aws-prod") -> Snapshot:
    writer = store.begin(source, "aws_iam", started_at)
    writer.write_table("accounts", accounts_frame())
    writer.write_table("events", events_frame())
    for request, body, endpoint, params, records in PAGES:
        writer.raw.page(request, body, endpoint=endpoint, parameters=params, records=records)
    return writer.commit(
        finished_at=T1 if started_at == T0 else started_at + dt.timedelta(minutes=3),
        principal="arn:aws:iam::111122223333:user/collector",
        instances=["111122223333"],
        window=(dt.datetime(2025, 12, 1, 2, 0, tzinfo=UTC), started_at),
        limitations=["one limitation"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


# --- publication and manifest --------------------------------------------------------------------


def test_snapshot_is_published_under_source_and_stamp(tmp_path):
    snap = write_snapshot(SnapshotStore(tmp_path))
    assert snap.path == tmp_path / "snapshots" / "aws-prod" / "20260301T020000000000Z"
    assert sorted(p.name for p in snap.path.iterdir()) == ["manifest.json", "raw", "tables"]
    assert sorted(p.name for p in (snap.path / "tables").iterdir()) == [
        "accounts.parquet", "events.parquet"]
    assert sorted(p.name for p in (snap.path / "raw").iterdir()) == [
        "cloudtrail.LookupEvents.jsonl.gz", "iam.GetAccountAuthorizationDetails.jsonl.gz"]
    # the work directory is gone
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_manifest_lists_the_sha256_of_every_file(tmp_path):
    snap = write_snapshot(SnapshotStore(tmp_path))
    manifest = json.loads((snap.path / "manifest.json").read_text(encoding="utf-8"))
    on_disk = sorted(p.relative_to(snap.path).as_posix() for p in snap.path.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk
    assert len(on_disk) == 4
    for rel, digest in manifest["files"].items():
        assert digest == sha256(snap.path / rel), rel
    assert snap.manifest_sha256 == sha256(snap.path / "manifest.json")
    assert snap.verify() == []


def test_manifest_ipe_fields(tmp_path):
    snap = write_snapshot(SnapshotStore(tmp_path))
    m = snap.manifest
    assert m["kind"] == "snapshot"
    assert m["schema_version"] == 1
    assert m["source"] == "aws-prod"
    assert m["type"] == "aws_iam"
    assert m["status"] == "ok"
    assert m["error"] is None
    assert m["tool_version"] == __version__
    assert m["started_at"] == "2026-03-01T02:00:00Z"
    assert m["finished_at"] == "2026-03-01T02:03:07.250000Z"
    assert m["principal"] == "arn:aws:iam::111122223333:user/collector"
    assert m["instances"] == ["111122223333"]
    assert m["limitations"] == ["one limitation"]
    assert m["window"] == {"start": "2025-12-01T02:00:00Z", "end": "2026-03-01T02:00:00Z"}
    assert m["tables"] == {
        "accounts": {"file": "tables/accounts.parquet", "records": 2},
        "events": {"file": "tables/events.parquet", "records": 1},
    }
    requests = m["requests"]
    assert set(requests) == {"iam.GetAccountAuthorizationDetails", "cloudtrail.LookupEvents"}
    iam = requests["iam.GetAccountAuthorizationDetails"]
    assert iam["endpoint"] == "https://iam.amazonaws.com"
    assert iam["parameters"] == {"Filter": ["User", "Group"]}
    assert (iam["pages"], iam["records"]) == (2, 2)
    assert iam["file"] == "raw/iam.GetAccountAuthorizationDetails.jsonl.gz"
    trail = requests["cloudtrail.LookupEvents"]
    assert (trail["pages"], trail["records"]) == (1, 1)
    assert trail["parameters"]["StartTime"] == "2025-12-01T02:00:00Z"
    for entry in requests.values():
        assert entry["file"] in m["files"]
    # parsed accessors
    assert snap.source == "aws-prod" and snap.status == "ok" and snap.good
    assert snap.started_at == pd.Timestamp(T0)
    assert snap.finished_at == pd.Timestamp(T1)
    assert snap.window == (utc("2025-12-01T02:00:00Z"), utc("2026-03-01T02:00:00Z"))
    assert snap.has_table("accounts") and not snap.has_table("people")


def test_started_at_in_another_zone_is_recorded_in_utc(tmp_path):
    from zoneinfo import ZoneInfo
    local = dt.datetime(2026, 3, 1, 3, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 02:00Z
    writer = SnapshotStore(tmp_path).begin("hr", "csv", local)
    snap = writer.commit(finished_at=local + dt.timedelta(seconds=1), principal=None,
                         instances=[], window=None)
    assert snap.path.name == "20260301T020000000000Z"
    assert snap.manifest["started_at"] == "2026-03-01T02:00:00Z"
    assert snap.manifest["finished_at"] == "2026-03-01T02:00:01Z"
    assert snap.manifest["window"] is None


def test_raw_pages_are_gzipped_json_lines_of_the_bodies(tmp_path):
    snap = write_snapshot(SnapshotStore(tmp_path))
    for request in ("iam.GetAccountAuthorizationDetails", "cloudtrail.LookupEvents"):
        path = snap.path / "raw" / f"{request}.jsonl.gz"
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = [json.loads(line) for line in fh.read().splitlines()]
        expected = [body for name, body, *_ in PAGES if name == request]
        assert [line["body"] for line in lines] == expected
        assert [line["page"] for line in lines] == list(range(1, len(expected) + 1))
        for line in lines:
            assert line["received_at"].endswith("Z")


def test_two_snapshots_with_the_same_start_are_both_kept(tmp_path):
    store = SnapshotStore(tmp_path)
    first = write_snapshot(store)
    second = write_snapshot(store)
    assert first.path != second.path
    assert first.path.is_dir() and second.path.is_dir()
    assert len(store.snapshots("aws-prod")) == 2


def test_tables_read_back_tz_aware_utc(tmp_path):
    snap = write_snapshot(SnapshotStore(tmp_path))
    accounts = snap.read("accounts")
    for column in ("created_at", "disabled_at", "last_login_at"):
        assert isinstance(accounts[column].dtype, pd.DatetimeTZDtype), column
        assert str(accounts[column].dtype.tz) == "UTC"
    assert accounts.loc[0, "created_at"] == utc("2026-01-05T08:00:00Z")   # +02:00 converted
    assert accounts.loc[1, "created_at"] == utc("2025-12-31T23:00:00Z")
    assert accounts.loc[0, "last_login_at"] == utc("2026-02-28T23:59:59.5Z")
    assert pd.isna(accounts.loc[0, "disabled_at"])
    assert accounts.loc[1, "disabled_at"] == utc("2026-02-01T00:00:00Z")
    assert list(accounts.loc[0, "groups"]) == ["admins", "dev"]
    assert list(accounts.loc[1, "groups"]) == []
    assert list(accounts["enabled"]) == [True, False]
    assert list(accounts.columns) == list(SCHEMAS["accounts"])
    events = snap.read("events")
    assert events.loc[0, "at"] == utc("2026-02-01T00:00:00Z")
    assert str(events["at"].dtype.tz) == "UTC"


# --- atomicity -----------------------------------------------------------------------------------


def test_nothing_under_snapshots_before_commit(tmp_path):
    store = SnapshotStore(tmp_path)
    writer = store.begin("aws-prod", "aws_iam", T0)
    writer.write_table("accounts", accounts_frame())
    writer.raw.page("iam.GetAccountAuthorizationDetails", {"x": 1}, endpoint="e", records=1)
    # while the writer is open: work happens under .tmp, nothing is visible to readers
    snapshots_dir = tmp_path / "snapshots"
    assert not snapshots_dir.exists() or tree(snapshots_dir) == []
    assert writer.work_dir.parent == tmp_path / ".tmp"
    assert (writer.work_dir / "tables" / "accounts.parquet").is_file()
    assert store.snapshots("aws-prod") == []
    assert store.latest("aws-prod") is None
    snap = writer.commit(finished_at=T1, principal="p", instances=["i"], window=None)
    assert not writer.work_dir.exists()
    assert [s.path for s in store.snapshots("aws-prod")] == [snap.path]


def test_abandoned_writer_leaves_nothing(tmp_path):
    store = SnapshotStore(tmp_path)
    writer = store.begin("aws-prod", "aws_iam", T0)
    writer.write_table("accounts", accounts_frame())
    writer.raw.page("iam.X", {"x": 1}, endpoint="e")
    writer.abandon()
    assert not writer.work_dir.exists()
    assert not (tmp_path / "snapshots").exists() or tree(tmp_path / "snapshots") == []
    assert list((tmp_path / ".tmp").iterdir()) == []
    assert store.snapshots("aws-prod") == []
    assert store.latest("aws-prod") is None


def test_exception_before_commit_leaves_no_snapshot(tmp_path):
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError):
        writer = store.begin("aws-prod", "aws_iam", T0)
        writer.write_table("accounts", accounts_frame())
        writer.raw.page("iam.X", {"x": 1}, endpoint="e")
        raise RuntimeError("crash mid-collection")
    assert not (tmp_path / "snapshots").exists() or tree(tmp_path / "snapshots") == []
    assert store.snapshots("aws-prod") == []
    # what is left is a stray work directory that nothing reads
    assert len(list((tmp_path / ".tmp").iterdir())) == 1


def test_conform_error_in_write_table_leaves_no_snapshot(tmp_path):
    store = SnapshotStore(tmp_path)
    writer = store.begin("aws-prod", "aws_iam", T0)
    with pytest.raises(SourceError):
        writer.write_table("accounts", accounts_frame().drop(columns=["login"]))
    writer.abandon()
    assert store.snapshots("aws-prod") == []


def test_failed_run_is_recorded_without_tables(tmp_path):
    store = SnapshotStore(tmp_path)
    good = write_snapshot(store)
    writer = store.begin("aws-prod", "aws_iam", T0 + dt.timedelta(days=1))
    writer.write_table("accounts", accounts_frame())
    writer.raw.page("iam.GetCredentialReport", {"error": "AccessDenied"}, endpoint="e",
                    records=0)
    failed = writer.fail("source 'aws-prod': AccessDenied on iam:GetCredentialReport",
                         finished_at=T1 + dt.timedelta(days=1))
    m = failed.manifest
    assert m["status"] == "failed"
    assert m["error"] == "source 'aws-prod': AccessDenied on iam:GetCredentialReport"
    assert m["tables"] == {}
    assert not (failed.path / "tables").exists()
    assert not failed.good and not failed.has_table("accounts")
    # the raw pages fetched so far stay as evidence, hashed
    assert set(m["files"]) == {"raw/iam.GetCredentialReport.jsonl.gz"}
    assert failed.verify() == []
    assert [s.path for s in store.snapshots("aws-prod")] == [good.path, failed.path]
    assert [s.path for s in store.good_snapshots("aws-prod")] == [good.path]
    assert store.latest("aws-prod").path == failed.path
    assert store.latest("aws-prod").status == "failed"


def test_latest_and_good_snapshots_are_ordered_by_start(tmp_path):
    store = SnapshotStore(tmp_path)
    later = write_snapshot(store, started_at=T0 + dt.timedelta(days=2))
    earlier = write_snapshot(store, started_at=T0)
    assert [s.path for s in store.good_snapshots("aws-prod")] == [earlier.path, later.path]
    assert store.latest("aws-prod").path == later.path
    assert store.snapshots("other") == [] and store.latest("other") is None


def test_degraded_commit_is_good(tmp_path):
    store = SnapshotStore(tmp_path)
    writer = store.begin("entra", "entra_id", T0)
    snap = writer.commit(finished_at=T1, status="degraded", principal="app", instances=["t"],
                         window=None, limitations=["no signInActivity"])
    assert snap.status == "degraded" and snap.good
    assert [s.path for s in store.good_snapshots("entra")] == [snap.path]


# --- verification --------------------------------------------------------------------------------


def test_verify_reports_a_changed_byte(tmp_path):
    snap = write_snapshot(SnapshotStore(tmp_path))
    path = snap.path / "tables" / "accounts.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert Snapshot(snap.path).verify() == ["tables/accounts.parquet: hash mismatch"]


def test_verify_reports_a_missing_file(tmp_path):
    snap = write_snapshot(SnapshotStore(tmp_path))
    (snap.path / "raw" / "cloudtrail.LookupEvents.jsonl.gz").unlink()
    assert Snapshot(snap.path).verify() == ["raw/cloudtrail.LookupEvents.jsonl.gz: missing"]


def test_verify_reports_an_extra_file(tmp_path):
    snap = write_snapshot(SnapshotStore(tmp_path))
    (snap.path / "tables" / "people.parquet").write_bytes(b"planted")
    assert Snapshot(snap.path).verify() == ["tables/people.parquet: not in manifest"]


def test_verify_snapshots_raises_integrity_error(tmp_path):
    store = SnapshotStore(tmp_path)
    clean = write_snapshot(store, started_at=T0)
    tampered = write_snapshot(store, started_at=T0 + dt.timedelta(days=1))
    store.verify_snapshots([clean, tampered])  # both intact: no error
    target = tampered.path / "tables" / "events.parquet"
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(IntegrityError) as info:
        store.verify_snapshots([clean, Snapshot(tampered.path)])
    message = str(info.value)
    assert str(tampered.path) in message
    assert "tables/events.parquet: hash mismatch" in message
    assert info.value.exit_code == 1


def test_hash_tree_is_sorted_posix_and_skips(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_bytes(b"x")
    (tmp_path / "a.txt").write_bytes(b"a")
    (tmp_path / "manifest.json").write_bytes(b"{}")
    hashes = hash_tree(tmp_path, skip={"manifest.json"})
    assert list(hashes) == ["a.txt", "b/x.txt"]
    assert hashes["a.txt"] == hashlib.sha256(b"a").hexdigest()


# --- fixed parquet schema ------------------------------------------------------------------------


def people_frame(terminated: bool) -> pd.DataFrame:
    rows = []
    for i in range(3):
        rows.append({
            "person_id": f"E{i}", "email": f"p{i}@corp.example", "hired_on": dt.date(2024, 1, 1),
            "terminated_on": dt.date(2026, 2, 1 + i) if terminated else None,
            "termination_effective": (pd.Timestamp(f"2026-02-0{2 + i}T05:00:00Z")
                                      if terminated else None),
        })
    return pd.DataFrame(rows)


def write_people(store: SnapshotStore, started_at: dt.datetime, df: pd.DataFrame) -> Snapshot:
    writer = store.begin("hr", "csv", started_at)
    writer.write_table("people", df)
    return writer.commit(finished_at=started_at + dt.timedelta(seconds=5), principal="hr",
                         instances=["hr.csv"], window=None)


def test_people_schema_is_fixed_whether_or_not_terminated_on_is_set(tmp_path):
    store = SnapshotStore(tmp_path)
    empty_term = write_people(store, T0, people_frame(terminated=False))
    set_term = write_people(store, T0 + dt.timedelta(days=1), people_frame(terminated=True))
    zero_rows = write_people(store, T0 + dt.timedelta(days=2), people_frame(True).iloc[0:0])
    schemas = [pq.read_schema(s.path / "tables" / "people.parquet")
               for s in (empty_term, set_term, zero_rows)]
    assert schemas[0].equals(schemas[1], check_metadata=True)
    assert schemas[0].equals(schemas[2])
    expected = arrow_schema("people")
    assert schemas[0].equals(expected)
    assert schemas[0].field("terminated_on").type == pa.date32()
    assert schemas[0].field("termination_effective").type == pa.timestamp("us", tz="UTC")
    assert schemas[0].names == list(SCHEMAS["people"])
    # and they read back alike
    a, b = empty_term.read("people"), set_term.read("people")
    assert list(a.dtypes) == list(b.dtypes)
    assert a["terminated_on"].isna().all()
    assert list(b["terminated_on"]) == [dt.date(2026, 2, 1), dt.date(2026, 2, 2),
                                        dt.date(2026, 2, 3)]
    assert str(b["termination_effective"].dtype.tz) == "UTC"
    assert b.loc[0, "termination_effective"] == utc("2026-02-02T05:00:00Z")


def test_accounts_schema_is_fixed_with_all_nulls(tmp_path):
    store = SnapshotStore(tmp_path)
    full = write_snapshot(store, started_at=T0)
    writer = store.begin("aws-prod", "aws_iam", T0 + dt.timedelta(days=1))
    writer.write_table("accounts", pd.DataFrame([{
        "source": "aws-prod", "instance": "1", "account_id": "A", "login": "x",
        "enabled": None}]))
    sparse = writer.commit(finished_at=T1 + dt.timedelta(days=1), principal=None, instances=[],
                           window=None)
    s1 = pq.read_schema(full.path / "tables" / "accounts.parquet")
    s2 = pq.read_schema(sparse.path / "tables" / "accounts.parquet")
    assert s1.equals(s2)
    assert s1.equals(arrow_schema("accounts"))


@pytest.mark.parametrize("column, values", [
    ("created_at", pd.Series(pd.to_datetime(["2026-01-05T10:00:00", "2026-01-06T10:00:00"]))),
    ("created_at", ["2026-01-05T10:00:00", "2026-01-06T10:00:00Z"]),
    ("last_login_at", [dt.datetime(2026, 1, 5, 10, 0), None]),
    ("disabled_at", [None, "2026-02-01 00:00:00"]),
])
def test_naive_timestamps_are_refused_naming_source_and_column(tmp_path, column, values):
    df = accounts_frame()
    df[column] = values
    writer = SnapshotStore(tmp_path).begin("aws-prod", "aws_iam", T0)
    with pytest.raises(SourceError) as info:
        writer.write_table("accounts", df)
    writer.abandon()
    message = str(info.value)
    assert info.value.source == "aws-prod"
    assert message.startswith("source 'aws-prod'")
    assert f"column '{column}'" in message
    assert "naive" in message and "tz-aware" in message
    assert info.value.exit_code == 2


def test_naive_event_time_is_refused(tmp_path):
    df = events_frame()
    df["at"] = [dt.datetime(2026, 2, 1)]
    writer = SnapshotStore(tmp_path).begin("workspace", "google_workspace", T0)
    with pytest.raises(SourceError) as info:
        writer.write_table("events", df)
    writer.abandon()
    assert "source 'workspace'" in str(info.value)
    assert "column 'at'" in str(info.value)


def test_missing_required_column_names_source_and_column(tmp_path):
    writer = SnapshotStore(tmp_path).begin("aws-prod", "aws_iam", T0)
    with pytest.raises(SourceError) as info:
        writer.write_table("events", events_frame().drop(columns=["event_id"]))
    writer.abandon()
    assert "source 'aws-prod'" in str(info.value)
    assert "event_id" in str(info.value) and "'events'" in str(info.value)


# --- sweeping stale work directories -------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_stale_work_directories_are_swept_young_ones_kept(tmp_path):
    store = SnapshotStore(tmp_path)
    stale = store.work_dir("snapshot-aws-prod")
    (stale / "raw").mkdir()
    (stale / "raw" / "page.jsonl.gz").write_bytes(b"old")
    young = store.work_dir("snapshot-hr")
    _age(stale, STALE_TMP_SECONDS + 3600)          # 25 hours old
    _age(young, STALE_TMP_SECONDS - 3600)          # 23 hours old
    fresh = store.work_dir("pack-2026-Q1")
    assert not stale.exists()
    assert young.is_dir()
    assert fresh.is_dir()
    assert sorted(p.name for p in (tmp_path / ".tmp").iterdir()) == sorted(
        [young.name, fresh.name])
    assert STALE_TMP_SECONDS == 24 * 3600


def test_sweep_does_not_touch_published_snapshots(tmp_path):
    store = SnapshotStore(tmp_path)
    snap = write_snapshot(store)
    _age(snap.path, 10 * STALE_TMP_SECONDS)
    _age(snap.path.parent, 10 * STALE_TMP_SECONDS)
    store.begin("aws-prod", "aws_iam", T0 + dt.timedelta(days=1)).abandon()
    assert snap.path.is_dir()
    assert snap.verify() == []
