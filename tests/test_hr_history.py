"""Movers from consecutive HR snapshots."""

import pandas as pd

from builders import people, person, ts
from collector.hr_history import role_changes
from collector.store import SnapshotStore


def snapshot(store, at, rows):
    writer = store.begin("hr", "csv", ts(at).to_pydatetime())
    writer.write_table("people", rows)
    return writer.commit(finished_at=(ts(at) + pd.Timedelta(seconds=30)).to_pydatetime(),
                         principal="t", instances=["hr.csv"], window=None)


def test_changes_between_snapshots_grouped_per_person(tmp_path):
    store = SnapshotStore(tmp_path)
    before = people(person("a@corp.com", department="Sales", title="AE"),
                    person("b@corp.com", department="IT", title="SRE"))
    after = people(person("A@corp.com ", department="Finance", title="Lead"),
                   person("b@corp.com", department="IT", title="SRE"))
    snaps = [snapshot(store, "2026-01-01T02:00Z", before),
             snapshot(store, "2026-01-02T02:00Z", before),      # same export: skipped by hash
             snapshot(store, "2026-01-03T02:00Z", after)]
    changes = role_changes(snaps, ts("2026-01-01T00:00Z"), ts("2026-04-01T00:00Z"))
    assert len(changes) == 1
    row = changes.iloc[0]
    assert (row["person"], row["field"], row["old"], row["new"]) == (
        "a@corp.com", "department, title", "Sales / AE", "Finance / Lead")
    # the bound starts at the last snapshot that still showed the old values
    assert row["lower"] == ts("2026-01-02T02:00Z")
    assert row["upper"] == ts("2026-01-03T02:00:30Z")
    assert role_changes(snaps, ts("2026-02-01T00:00Z"), ts("2026-04-01T00:00Z")).empty
