"""The three foundation controls on small frames (DESIGN §4, §9)."""

import datetime as dt

import pytest

from builders import StoreBuilder, account, event, inputs, people, person
from collector.allowlist import AllowlistEntry
from collector.config import PolicyConfig
from collector.controls import deprovisioning, no_access, orphans


@pytest.fixture
def sb(tmp_path):
    return StoreBuilder(tmp_path / "store")


def reasons(result):
    return sorted((f.account, f.reason) for f in result.exceptions)


def test_email_case_and_spaces_link_the_account(sb):
    sb.accounts("2026-01-01T02:00Z", [account("ALICE@Corp.com ")])
    sb.accounts("2026-04-01T02:00Z", [account("ALICE@Corp.com ")])
    res = orphans.evaluate(inputs(sb, people(person("  alice@corp.COM"))))
    assert res.status == "pass" and res.population_size == 1
    assert res.population.loc[0, "linked_person"] == "alice@corp.com"


def test_alias_links_the_account(sb):
    sb.accounts("2026-01-01T02:00Z", [account("a.smith@corp.com")])
    sb.accounts("2026-04-01T02:00Z", [account("a.smith@corp.com")])
    hr = people(person("alice@corp.com", aliases=["A.Smith@corp.com"]))
    assert orphans.evaluate(inputs(sb, hr)).exceptions == []
    # without the alias the same account is an orphan
    assert reasons(orphans.evaluate(inputs(sb, people(person("alice@corp.com"))))) == \
        [("a.smith@corp.com", "no_hr_record")]


def test_ambiguous_alias_is_reported_never_guessed(sb):
    sb.accounts("2026-04-01T02:00Z", [account("shared@corp.com")])
    hr = people(person("a@corp.com", aliases=["shared@corp.com"]),
                person("b@corp.com", aliases=["shared@corp.com"]))
    res = orphans.evaluate(inputs(sb, hr))
    assert reasons(res) == [("shared@corp.com", "ambiguous_hr_record")]
    assert "a@corp.com" in res.exceptions[0].detail and "b@corp.com" in res.exceptions[0].detail


@pytest.mark.parametrize("minutes, expected", [(24 * 60 - 1, []), (24 * 60, []),
                                               (24 * 60 + 1, ["disabled_late"])])
def test_disable_event_just_inside_and_just_outside_the_sla(sb, minutes, expected):
    # termination 2026-02-10 end_of_day UTC → effective 2026-02-11T00:00Z
    when = (dt.datetime(2026, 2, 11, tzinfo=dt.timezone.utc)
            + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%MZ")
    sb.accounts("2026-02-01T02:00Z", [account("bob@corp.com")])
    sb.accounts("2026-02-20T02:00Z", [account("bob@corp.com", enabled=False)],
                events=[event("disabled", when, "bob@corp.com")])
    res = deprovisioning.evaluate(inputs(sb, people(person("bob@corp.com", terminated="2026-02-10"))))
    assert [f.reason for f in res.exceptions] == expected
    assert res.population.loc[0, "basis"] == "audit event"
    if expected:
        assert res.exceptions[0].hours_over_sla == pytest.approx(1 / 60, abs=0.01)


def test_bounded_disable_judged_by_its_upper_bound(sb):
    hr = people(person("in@corp.com", terminated="2026-02-10"),
                person("late@corp.com", terminated="2026-02-10"),
                person("straddle@corp.com", terminated="2026-02-10"))
    # "in" and "straddle" are gone by the 11th 20:05; "late" is still enabled on the 13th
    sb.accounts("2026-02-10T20:00Z", [account("in@corp.com"), account("late@corp.com"),
                                      account("straddle@corp.com")])
    sb.accounts("2026-02-11T20:00Z", [account("late@corp.com")])
    sb.accounts("2026-02-13T20:00Z", [account("late@corp.com")])
    sb.accounts("2026-02-14T20:00Z", [account("late@corp.com", enabled=False)])
    res = deprovisioning.evaluate(inputs(sb, hr))
    got = {r.account: (r.result, r.basis) for r in res.population.itertuples()}
    assert got["in@corp.com"] == ("on_time", "snapshot bound")
    assert got["late@corp.com"] == ("disabled_late", "snapshot bound")
    # straddle disappeared between 10th 20:00 (before the 11th 00:00 deadline start) and
    # the 11th 20:05: upper bound within the SLA → on time
    assert got["straddle@corp.com"][0] == "on_time"
    late = next(f for f in res.exceptions if f.account == "late@corp.com")
    # at least: last seen enabled 13th 20:00 − deadline 12th 00:00 (effective 11th 00:00 + 24 h)
    assert late.hours_over_sla == pytest.approx(44.0, abs=0.01)


def test_bounds_straddling_the_deadline_are_disable_time_unknown(sb):
    hr = people(person("x@corp.com", terminated="2026-02-10"))
    sb.accounts("2026-02-10T12:00Z", [account("x@corp.com")])
    sb.accounts("2026-02-15T12:00Z", [account("x@corp.com", enabled=False)])
    res = deprovisioning.evaluate(inputs(sb, hr))
    assert reasons(res) == [("x@corp.com", "disable_time_unknown")]
    assert res.complete  # an undecidable item is an exception, not a gap


def test_friday_evening_termination_in_the_hr_timezone(sb):
    # Friday 2026-03-13 end of day in New York (EDT since 8 March) = Saturday 04:00Z;
    # disabled Sunday 03:30Z is 23.5 h later: on time. Read as UTC it would be 27.5 h: late.
    ny = people(person("fri@corp.com", terminated="2026-03-13", tz="America/New_York"))
    assert str(ny.loc[0, "termination_effective"]) == "2026-03-14 04:00:00+00:00"
    sb.accounts("2026-03-13T12:00Z", [account("fri@corp.com")])
    sb.accounts("2026-03-16T12:00Z", [account("fri@corp.com", enabled=False)],
                events=[event("disabled", "2026-03-15T03:30Z", "fri@corp.com")])
    assert deprovisioning.evaluate(inputs(sb, ny, hr_tz="America/New_York")).exceptions == []
    utc = people(person("fri@corp.com", terminated="2026-03-13", tz="UTC"))
    assert reasons(deprovisioning.evaluate(inputs(sb, utc))) == [("fri@corp.com", "disabled_late")]


def test_contractor_still_enabled(sb):
    hr = people(person("c@vendor.example", terminated="2026-01-31", worker_type="contractor"))
    sb.accounts("2026-01-15T02:00Z", [account("c@vendor.example")])
    sb.accounts("2026-04-01T02:00Z", [account("c@vendor.example")])
    res = deprovisioning.evaluate(inputs(sb, hr))
    assert reasons(res) == [("c@vendor.example", "still_enabled")]
    assert res.population.loc[0, "worker_type"] == "contractor"


def test_termination_after_the_period_is_not_in_the_population(sb):
    hr = people(person("later@corp.com", terminated="2026-04-05"))
    sb.accounts("2026-01-15T02:00Z", [account("later@corp.com")])
    sb.accounts("2026-04-10T02:00Z", [account("later@corp.com")])
    res = deprovisioning.evaluate(inputs(sb, hr, now="2026-04-20T00:00Z"))
    assert res.population_size == 0 and res.status == "pass"


def test_rehire_reenables_the_account_legitimately(sb):
    hr = people(person("r@corp.com", person_id="r1", hired="2024-01-01", terminated="2026-01-20"),
                person("r@corp.com", person_id="r1", hired="2026-03-01"))
    sb.accounts("2026-01-20T12:00Z", [account("r@corp.com")])
    sb.accounts("2026-01-21T12:00Z", [account("r@corp.com", enabled=False)])
    sb.accounts("2026-03-02T12:00Z", [account("r@corp.com")])     # rehired: enabled again
    sb.accounts("2026-04-01T12:00Z", [account("r@corp.com")],
                events=[event("login", "2026-03-05T09:00Z", "r@corp.com")])
    i = inputs(sb, hr)
    assert deprovisioning.evaluate(i).exceptions == []
    assert no_access.evaluate(i).exceptions == []
    assert orphans.evaluate(i).exceptions == []


def test_failed_source_is_never_a_pass(sb):
    hr = people(person("ok@corp.com", terminated="2026-02-10"))
    sb.accounts("2026-02-01T02:00Z", [account("ok@corp.com")])
    sb.accounts("2026-02-11T02:00Z", [account("ok@corp.com", enabled=False)])
    sb.accounts("2026-04-01T02:00Z", [], failed=True)
    i = inputs(sb, hr, source_ok=False)
    for control in (deprovisioning, no_access, orphans):
        res = control.evaluate(i)
        assert res.status == "not_evaluable", control.ID
        assert any("failed" in lim for lim in res.limitations)


def test_failed_source_with_exceptions_fails(sb):
    hr = people(person("gone@corp.com", terminated="2026-02-10"))
    sb.accounts("2026-02-01T02:00Z", [account("gone@corp.com")])
    sb.accounts("2026-03-01T02:00Z", [account("gone@corp.com")])
    res = deprovisioning.evaluate(inputs(sb, hr, source_ok=False))
    assert res.status == "fail" and not res.complete


def test_login_after_termination_from_events_and_values(sb):
    hr = people(person("ev@corp.com", terminated="2026-02-10"),
                person("val@corp.com", terminated="2026-02-10"),
                person("before@corp.com", terminated="2026-02-10"))
    sb.accounts("2026-02-01T02:00Z", [account("ev@corp.com"), account("val@corp.com"),
                                      account("before@corp.com")])
    sb.accounts("2026-02-12T02:00Z", [
        account("ev@corp.com", enabled=False),
        account("val@corp.com", enabled=False, last_login_at="2026-02-11T08:00Z"),
        account("before@corp.com", enabled=False, last_login_at="2026-02-10T08:00Z")],
        events=[event("login", "2026-02-11T00:30Z", "ev@corp.com"),
                event("login", "2026-02-11T01:00Z", "before@corp.com", outcome="failure")])
    res = no_access.evaluate(inputs(sb, hr))
    assert reasons(res) == [("ev@corp.com", "login_after_termination"),
                            ("val@corp.com", "login_after_termination")]
    # a 60-minute grace forgives the 00:30 sign-in, not the 08:00 one
    graced = no_access.evaluate(inputs(sb, hr, policy=PolicyConfig(login_grace_minutes=60)))
    assert reasons(graced) == [("val@corp.com", "login_after_termination")]


def test_no_sign_in_evidence_is_a_limitation(sb):
    hr = people(person("quiet@corp.com", terminated="2026-02-10"))
    # snapshots carry no sign-in value and the event window starts after the termination
    sb.accounts("2026-02-01T02:00Z", [account("quiet@corp.com")], since="2026-01-31T00:00Z")
    sb.accounts("2026-02-20T02:00Z", [account("quiet@corp.com", enabled=False)],
                since="2026-02-15T00:00Z")
    res = no_access.evaluate(inputs(sb, hr))
    assert res.status == "not_evaluable"
    assert "no sign-in evidence" in res.limitations[0]
    # "never signed in" is a value and decides the account
    sb2 = StoreBuilder(sb.store.root.parent / "other")
    sb2.accounts("2026-02-01T02:00Z", [account("quiet@corp.com")], since="2026-01-31T00:00Z")
    sb2.accounts("2026-02-20T02:00Z", [account("quiet@corp.com", never_logged_in=True)],
                 since="2026-02-15T00:00Z")
    assert no_access.evaluate(inputs(sb2, hr)).status == "pass"


def test_orphans_terminated_before_period_and_allowlist_expiry(sb):
    hr = people(person("old@corp.com", terminated="2025-11-30"), person("cur@corp.com"))
    sb.accounts("2026-04-01T02:00Z", [account("old@corp.com"), account("cur@corp.com"),
                                      account("ci-deployer", email=""),
                                      account("legacy-bot", email="")])
    allow = [AllowlistEntry("aws-prod", "CI-Deployer", "platform@corp.com", "CI", dt.date(2027, 1, 1)),
             AllowlistEntry("aws_iam", "legacy-bot", "it@corp.com", "old", dt.date(2026, 3, 31))]
    res = orphans.evaluate(inputs(sb, hr, allowlist=allow))
    assert reasons(res) == [("legacy-bot", "no_hr_record"), ("old@corp.com", "terminated_before_period")]
    assert "expired" in next(f.detail for f in res.exceptions if f.account == "legacy-bot")
    assert list(res.excluded["account"]) == ["ci-deployer"]
    assert res.population_size == 3   # excluded accounts are listed, not judged


def test_disabled_accounts_are_not_orphans(sb):
    sb.accounts("2026-04-01T02:00Z", [account("nobody@corp.com", enabled=False)])
    res = orphans.evaluate(inputs(sb, people(person("x@corp.com"))))
    assert res.population_size == 0 and res.status == "pass"


def test_account_deleted_before_first_snapshot_seen_in_events(sb):
    hr = people(person("early@corp.com", terminated="2026-01-05"))
    sb.accounts("2026-01-10T02:00Z", [], events=[
        event("created", "2025-12-01T00:00Z", "early@corp.com"),
        event("deleted", "2026-01-08T00:00Z", "early@corp.com")])
    sb.accounts("2026-04-01T02:00Z", [])
    res = deprovisioning.evaluate(inputs(sb, hr))
    assert res.population_size == 1
    assert reasons(res) == [("early@corp.com", "disabled_late")]
    assert res.exceptions[0].evidence == "audit event"


def test_employee_id_links_when_no_email_matches(sb):
    row = account("x-7781", email="")
    row["employee_id"] = "E42"
    sb.accounts("2026-04-01T02:00Z", [row])
    hr = people(person("dana@corp.com", person_id="E42"))
    assert orphans.evaluate(inputs(sb, hr)).exceptions == []
    other = people(person("dana@corp.com", person_id="E43"))
    assert reasons(orphans.evaluate(inputs(sb, other))) == [("x-7781", "no_hr_record")]


def test_a_source_without_sign_in_data_is_a_limitation(sb):
    sb.accounts("2026-04-01T02:00Z", [account("a@corp.com")])
    i = inputs(sb, people(person("a@corp.com")))
    i.account_sources[0].sign_in_data = False
    res = no_access.evaluate(i)
    assert res.status == "not_evaluable"
    assert "no sign-in data" in res.limitations[0]


def test_account_aliases_link_when_the_primary_email_does_not(sb):
    row = account("g.user@old-domain.example")
    row["aliases"] = ["gina@corp.com"]
    sb.accounts("2026-04-01T02:00Z", [row])
    assert orphans.evaluate(inputs(sb, people(person("gina@corp.com")))).exceptions == []
    both = people(person("gina@corp.com"), person("x@corp.com", aliases=["x2@corp.com"]))
    row["aliases"] = ["gina@corp.com", "x2@corp.com"]
    sb2 = StoreBuilder(sb.store.root.parent / "other")
    sb2.accounts("2026-04-01T02:00Z", [row])
    assert reasons(orphans.evaluate(inputs(sb2, both))) == [
        ("g.user@old-domain.example", "ambiguous_hr_record")]
