"""Audit periods (collector/periods.py, DESIGN §9): UTC labels, half-open [start, end)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from collector.errors import ConfigError
from collector.periods import Period, current_quarter, parse_period

UTC = dt.timezone.utc


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.mark.parametrize("label, start, end", [
    ("2026-Q1", "2026-01-01", "2026-04-01"),
    ("2026-Q2", "2026-04-01", "2026-07-01"),
    ("2026-Q3", "2026-07-01", "2026-10-01"),
    ("2026-Q4", "2026-10-01", "2027-01-01"),
    ("2026-03", "2026-03-01", "2026-04-01"),
    ("2026-02", "2026-02-01", "2026-03-01"),
    ("2024-02", "2024-02-01", "2024-03-01"),
    ("2026-12", "2026-12-01", "2027-01-01"),
    ("2026-01-01..2026-03-31", "2026-01-01", "2026-04-01"),
    ("2026-03-15..2026-03-15", "2026-03-15", "2026-03-16"),   # one day
    ("2024-02-28..2024-02-29", "2024-02-28", "2024-03-01"),   # leap day included
    ("2026-12-01..2026-12-31", "2026-12-01", "2027-01-01"),
])
def test_period_bounds(label, start, end):
    period = parse_period(label)
    assert period.label == label
    assert period.start == utc(start)
    assert period.end == utc(end)
    # UTC midnights, tz-aware
    for bound in (period.start, period.end):
        assert str(bound.tz) == "UTC"
        assert (bound.hour, bound.minute, bound.second, bound.microsecond) == (0, 0, 0, 0)


def test_quarter_is_half_open():
    q1 = parse_period("2026-Q1")
    assert q1.contains(utc("2026-01-01T00:00:00"))
    assert q1.contains(utc("2026-03-31T23:59:59.999999"))
    assert not q1.contains(utc("2026-04-01T00:00:00"))
    assert not q1.contains(utc("2025-12-31T23:59:59.999999"))
    assert not q1.contains(None)
    assert not q1.contains(pd.NaT)


def test_range_includes_both_dates():
    period = parse_period("2026-01-01..2026-03-31")
    assert period.contains(utc("2026-01-01T00:00:00"))
    assert period.contains(utc("2026-03-31T23:59:59"))
    assert not period.contains(utc("2026-04-01T00:00:00"))
    # same bounds as the quarter, label kept as given
    q1 = parse_period("2026-Q1")
    assert (period.start, period.end) == (q1.start, q1.end)
    assert period.label != q1.label


def test_label_surrounding_whitespace_is_stripped():
    assert parse_period("  2026-Q2 \n").label == "2026-Q2"


@pytest.mark.parametrize("label, fragment", [
    ("2026-03-31..2026-01-01", "before the start"),
    ("2026-13", "month must be 01..12"),
    ("2026-00", "month must be 01..12"),
    ("2026-Q5", "not understood"),
    ("2026-Q0", "not understood"),
    ("garbage", "not understood"),
    ("", "not understood"),
    ("2026", "not understood"),
    ("26-Q1", "not understood"),
    ("2026-3", "not understood"),
    ("2026-01-01..", "not understood"),
    ("2026-01-01...2026-03-31", "not understood"),
    ("2026/01/01..2026/03/31", "not understood"),
    ("2026-02-30..2026-03-31", "2026-02-30"),
    ("2026-01-01..2026-13-01", "2026-13-01"),
])
def test_bad_labels_are_config_errors(label, fragment):
    with pytest.raises(ConfigError) as info:
        parse_period(label)
    message = str(info.value)
    assert fragment in message, message
    assert info.value.exit_code == 3
    if label.strip():
        assert label in message  # the message names what was given


def test_not_understood_message_shows_the_accepted_forms():
    with pytest.raises(ConfigError) as info:
        parse_period("last quarter")
    for form in ("2026-Q1", "2026-03", "2026-01-01..2026-03-31"):
        assert form in str(info.value)


@pytest.mark.parametrize("label", ["0000-Q1", "0000-01", "9999-Q4", "9999-12",
                                   "9999-12-31..9999-12-31"])
def test_out_of_range_years_are_config_errors(label):
    with pytest.raises(ConfigError):
        parse_period(label)


def test_period_in_progress_judges_until_now():
    period = parse_period("2026-Q2")
    now = dt.datetime(2026, 5, 10, 14, 30, tzinfo=UTC)
    assert period.in_progress(now) is True
    assert period.judged_until(now) == utc("2026-05-10T14:30:00")
    # a period that has not started is in progress too, judged up to now
    assert parse_period("2026-Q3").in_progress(now) is True


def test_period_ended_judges_until_its_end():
    period = parse_period("2026-Q1")
    after = dt.datetime(2026, 4, 2, 6, 0, tzinfo=UTC)
    assert period.in_progress(after) is False
    assert period.judged_until(after) == period.end
    # the end instant itself is outside the half-open period: no longer in progress
    at_end = dt.datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
    assert period.in_progress(at_end) is False
    assert period.judged_until(at_end) == period.end
    just_before = dt.datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)
    assert period.in_progress(just_before) is True
    assert period.judged_until(just_before) == utc("2026-03-31T23:59:59")


def test_in_progress_with_a_non_utc_now():
    period = parse_period("2026-Q1")
    # 2026-03-31 20:30 in New York is 2026-04-01 00:30 UTC: the quarter is over
    from zoneinfo import ZoneInfo
    now = dt.datetime(2026, 3, 31, 20, 30, tzinfo=ZoneInfo("America/New_York"))
    assert period.in_progress(now) is False
    assert period.judged_until(now) == period.end


@pytest.mark.parametrize("now, label", [
    (dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC), "2026-Q1"),
    (dt.datetime(2026, 3, 31, 23, 59, tzinfo=UTC), "2026-Q1"),
    (dt.datetime(2026, 4, 1, 0, 0, tzinfo=UTC), "2026-Q2"),
    (dt.datetime(2026, 12, 31, 23, 59, tzinfo=UTC), "2026-Q4"),
])
def test_current_quarter(now, label):
    period = current_quarter(now)
    assert isinstance(period, Period)
    assert period.label == label
    assert period.start <= pd.Timestamp(now) < period.end
