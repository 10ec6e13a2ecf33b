"""Account timelines: exact times from audit events, otherwise snapshot bounds, basis stated."""

import pandas as pd
import pytest

from builders import StoreBuilder, account, event, ts
from collector.timeline import ACCOUNT_RECORD, EVENT, SNAPSHOTS


@pytest.fixture
def sb(tmp_path):
    return StoreBuilder(tmp_path / "store")


def row(tl, login):
    return int(tl.accounts.index[tl.accounts["login"] == login][0])


def test_creation_disable_deletion_from_events_are_exact(sb):
    sb.accounts("2026-01-01T02:00Z", [])
    sb.accounts("2026-01-02T02:00Z", [account("a@corp.com")], events=[
        event("created", "2026-01-01T10:00Z", "a@corp.com")])
    sb.accounts("2026-01-03T02:00Z", [account("a@corp.com", enabled=False)], events=[
        event("disabled", "2026-01-02T15:00Z", "a@corp.com")])
    sb.accounts("2026-01-04T02:00Z", [], events=[event("deleted", "2026-01-03T09:00Z", "a@corp.com")])
    tl = sb.timeline()
    r = row(tl, "a@corp.com")
    created = tl.creation(r)
    assert (created.basis, created.upper) == (EVENT, ts("2026-01-01T10:00Z"))
    disabled = tl.disable_after(r, ts("2026-01-01T12:00Z")).when
    assert disabled.exact and disabled.upper == ts("2026-01-02T15:00Z")
    deleted = tl.deletion(r)
    assert (deleted.basis, deleted.upper) == (EVENT, ts("2026-01-03T09:00Z"))


def test_without_events_changes_are_bounded_by_consecutive_snapshots(sb):
    sb.accounts("2026-01-01T02:00Z", [])
    sb.accounts("2026-01-02T02:00Z", [account("b@corp.com", created_at="2026-03-01T00:00Z")])
    sb.accounts("2026-01-03T02:00Z", [account("b@corp.com", enabled=False)])
    sb.accounts("2026-01-04T02:00Z", [])
    tl = sb.timeline()
    r = row(tl, "b@corp.com")
    # the account's own creation time is after it was first seen: not trusted, bounded instead
    created = tl.creation(r)
    assert created.basis == SNAPSHOTS
    assert (created.lower, created.upper) == (ts("2026-01-01T02:00Z"), ts("2026-01-02T02:05Z"))
    disabled = tl.disable_after(r, ts("2026-01-01T00:00Z")).when
    assert (disabled.basis, disabled.lower, disabled.upper) == (
        SNAPSHOTS, ts("2026-01-02T02:00Z"), ts("2026-01-03T02:05Z"))
    assert "between" in disabled.describe() and "snapshot bound" in disabled.describe()
    deleted = tl.deletion(r)
    assert (deleted.lower, deleted.upper) == (ts("2026-01-03T02:00Z"), ts("2026-01-04T02:05Z"))


def test_account_record_creation_time_is_used_when_consistent(sb):
    sb.accounts("2026-01-02T02:00Z", [account("c@corp.com", created_at="2025-06-01T08:00Z")])
    tl = sb.timeline()
    created = tl.creation(row(tl, "c@corp.com"))
    assert (created.basis, created.upper) == (ACCOUNT_RECORD, ts("2025-06-01T08:00Z"))


def test_event_windows_and_overlap_dedupe(sb):
    ev = event("login", "2026-01-01T12:00Z", "d@corp.com", event_id="same")
    sb.accounts("2026-01-02T02:00Z", [account("d@corp.com")], events=[ev],
                since="2025-12-31T00:00Z")
    sb.accounts("2026-01-03T02:00Z", [account("d@corp.com")], events=[ev],
                since="2026-01-02T01:00Z")
    sb.accounts("2026-01-08T02:00Z", [account("d@corp.com")], since="2026-01-06T00:00Z")
    tl = sb.timeline()
    assert len(tl.events) == 1                         # the overlap is deduplicated by id
    assert tl.events_cover(ts("2026-01-01T00:00Z"), ts("2026-01-03T02:00Z"))
    assert not tl.events_cover(ts("2026-01-01T00:00Z"), ts("2026-01-07T00:00Z"))   # a hole
    assert tl.events_until == ts("2026-01-08T02:00Z")


def test_state_matrix_tracks_accounts_across_snapshots(sb):
    sb.accounts("2026-01-01T02:00Z", [account("e@corp.com"), account("f@corp.com")])
    sb.accounts("2026-01-02T02:00Z", [account("f@corp.com", enabled=False),
                                      account("g@corp.com", last_login_at="2026-01-01T20:00Z")])
    tl = sb.timeline()
    states = {login: list(tl.state[row(tl, login)]) for login in ("e@corp.com", "f@corp.com",
                                                                  "g@corp.com")}
    assert states == {"e@corp.com": [2, 0], "f@corp.com": [2, 1], "g@corp.com": [0, 2]}
    assert tl.accounts.loc[row(tl, "g@corp.com"), "last_login_at"] == ts("2026-01-01T20:00Z")
    assert pd.isna(tl.accounts.loc[row(tl, "e@corp.com"), "last_login_at"])


def test_changes_in_a_period_state_their_basis(sb):
    sb.accounts("2026-01-01T02:00Z", [account("old@corp.com")])
    sb.accounts("2026-01-02T02:00Z", [account("old@corp.com", enabled=False),
                                      account("new@corp.com")],
                events=[event("created", "2026-01-01T09:00Z", "new@corp.com")])
    sb.accounts("2026-01-03T02:00Z", [account("new@corp.com")], events=[
        event("created", "2026-01-02T05:00Z", "blink@corp.com"),
        event("deleted", "2026-01-02T06:00Z", "blink@corp.com")])
    tl = sb.timeline()
    got = {(r.account, r.change): (r.basis, r.at_or_after, r.at_or_before)
           for r in tl.changes(ts("2026-01-01T00:00Z"), ts("2026-02-01T00:00Z")).itertuples()}
    assert got[("new@corp.com", "created")] == ("audit event", ts("2026-01-01T09:00Z"),
                                                ts("2026-01-01T09:00Z"))
    assert got[("old@corp.com", "disabled")] == ("snapshot bound", ts("2026-01-01T02:00Z"),
                                                 ts("2026-01-02T02:05Z"))
    assert got[("old@corp.com", "deleted")][0] == "snapshot bound"
    # created and deleted between two collections: known from its events alone
    assert got[("blink@corp.com", "created")][0] == "audit event"
    assert got[("blink@corp.com", "deleted")][0] == "audit event"
    assert ("new@corp.com", "disabled") not in got
    # a period after all of it sees nothing
    assert tl.changes(ts("2026-03-01T00:00Z"), ts("2026-04-01T00:00Z")).empty
