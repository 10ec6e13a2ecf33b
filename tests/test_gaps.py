"""Coverage gaps: relative to the usual cadence; unrecoverable only when no event bridges them."""

import pandas as pd

from builders import StoreBuilder, ts
from collector.periods import parse_period
from collector.pipeline import _gaps


def collect_days(sb, days, since_first="2025-12-01T00:00Z"):
    snaps = []
    for n, day in enumerate(days):
        at = (ts("2026-01-01T02:00Z") + pd.Timedelta(days=day)).strftime("%Y-%m-%dT%H:%MZ")
        prev = None if n == 0 else (ts("2026-01-01T02:00Z")
                                    + pd.Timedelta(days=days[n - 1], hours=-1))
        snaps.append(sb.accounts(at, [], since=prev.strftime("%Y-%m-%dT%H:%MZ") if prev
                                 else since_first))
    return snaps


def test_an_outage_bridged_by_events_is_a_recoverable_gap(tmp_path):
    sb = StoreBuilder(tmp_path)
    days = [d for d in range(0, 30) if d not in (10, 11, 12)]
    snaps = collect_days(sb, days)
    period = parse_period("2026-01-01..2026-01-30")
    gaps = _gaps(snaps, period, period.end, sb.timeline(), 90, hr=False)
    assert [(g["days"], g["unrecoverable"]) for g in gaps] == [(4.0, False)]
    assert "bridged" in gaps[0]["note"]
    # without the events bridging it, the same stretch is lost for good
    lost = _gaps(snaps, period, period.end, None, 90, hr=False)
    assert lost[0]["unrecoverable"] and "no longer be recovered" in lost[0]["note"]
    # an HR gap is bounded, not lost
    hr = _gaps(snaps, period, period.end, None, None, hr=True)
    assert not hr[0]["unrecoverable"] and "bounded" in hr[0]["note"]


def test_gaps_follow_the_usual_cadence(tmp_path):
    sb = StoreBuilder(tmp_path)
    snaps = collect_days(sb, list(range(0, 30, 2)))     # every second day: no gap at all
    period = parse_period("2026-01-01..2026-01-29")
    assert _gaps(snaps, period, period.end, sb.timeline(), 90, hr=False) == []
