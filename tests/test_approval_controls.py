"""provisioning-approved and role-change-approved on small frames: every reason and the
non-exceptions (approved in time, approval exactly at the grace limit)."""

import pytest

from builders import StoreBuilder, account, event, inputs, people, person, ticket, ts
from collector.config import PolicyConfig
from collector.controls import deprovisioning, provisioning, role_changes

HR = people(person("new@corp.com"), person("boss@corp.com", aliases=["chief@corp.com"]))
CREATED = "2026-02-10T12:00Z"


@pytest.fixture
def sb(tmp_path):
    b = StoreBuilder(tmp_path / "store")
    b.accounts("2026-01-01T02:00Z", [account("boss@corp.com")], since="2025-10-01T00:00Z")
    b.accounts("2026-02-11T02:00Z", [account("boss@corp.com"), account("new@corp.com")],
               events=[event("created", CREATED, "new@corp.com")])
    b.accounts("2026-04-01T02:00Z", [account("boss@corp.com"), account("new@corp.com")])
    return b


def judged(sb, tickets, **kw):
    res = provisioning.evaluate(inputs(sb, HR, tickets=tickets, **kw))
    return res, [(f.account, f.reason, f.ticket) for f in res.exceptions]


def test_approved_before_creation_passes(sb):
    res, found = judged(sb, [ticket("ACC-1", "New@Corp.com ", approved_at="2026-02-09T09:00Z",
                                    approver="boss@corp.com")])
    assert found == [] and res.status == "pass"
    assert res.population_size == 1        # boss pre-dates the period: not in the population
    assert res.population.loc[0, "ticket"] == "ACC-1"


def test_no_ticket_wrong_system_and_wrong_person(sb):
    tickets = [ticket("ACC-2", "new@corp.com", target="google", approved_at="2026-02-01T00:00Z",
                      approver="boss@corp.com"),
               ticket("ACC-3", "other@corp.com", approved_at="2026-02-01T00:00Z",
                      approver="boss@corp.com")]
    assert judged(sb, tickets)[1] == [("new@corp.com", "no_ticket", None)]


def test_target_system_matches_the_source_type_too(sb):
    tickets = [ticket("ACC-4", "new@corp.com", target="AWS_IAM", approved_at="2026-02-01T00:00Z",
                      approver="boss@corp.com")]
    assert judged(sb, tickets)[1] == []


def test_approved_after_creation(sb):
    tickets = [ticket("ACC-5", "new@corp.com", approved_at="2026-02-10T12:01Z",
                      approver="boss@corp.com")]
    res, found = judged(sb, tickets)
    assert found == [("new@corp.com", "approved_after_creation", "ACC-5")]
    assert res.exceptions[0].ticket_url.endswith("/ACC-5")


@pytest.mark.parametrize("minutes, ok", [(30, True), (29, False)])
def test_approval_exactly_at_the_grace_limit(sb, minutes, ok):
    tickets = [ticket("ACC-6", "new@corp.com", approved_at="2026-02-10T12:30Z",
                      approver="boss@corp.com")]
    policy = PolicyConfig(approval_grace_minutes=minutes)
    found = judged(sb, tickets, policy=policy)[1]
    assert found == ([] if ok else [("new@corp.com", "approved_after_creation", "ACC-6")])


def test_self_approved_through_an_alias(sb):
    hr = people(person("new@corp.com", aliases=["n.ew@corp.com"]), person("boss@corp.com"))
    tickets = [ticket("ACC-7", "new@corp.com", approved_at="2026-02-01T00:00Z",
                      approver="N.EW@corp.com")]
    res = provisioning.evaluate(inputs(sb, hr, tickets=tickets))
    assert [(f.reason, f.ticket) for f in res.exceptions] == [("self_approved", "ACC-7")]


@pytest.mark.parametrize("status", ["rejected", "pending"])
def test_ticket_not_approved(sb, status):
    tickets = [ticket("ACC-8", "new@corp.com", status=status)]
    assert judged(sb, tickets)[1] == [("new@corp.com", "ticket_not_approved", "ACC-8")]


def test_bounded_creation_needs_approval_before_the_earliest_moment(tmp_path):
    b = StoreBuilder(tmp_path / "s2")
    b.accounts("2026-02-01T02:00Z", [], since="2025-12-01T00:00Z")
    b.accounts("2026-02-02T02:00Z", [account("new@corp.com")])   # no event: bounded
    b.accounts("2026-04-01T02:00Z", [account("new@corp.com")])
    between = [ticket("ACC-9", "new@corp.com", approved_at="2026-02-01T12:00Z",
                      approver="boss@corp.com")]
    before = [ticket("ACC-9", "new@corp.com", approved_at="2026-01-31T12:00Z",
                     approver="boss@corp.com")]
    res = provisioning.evaluate(inputs(b, HR, tickets=between))
    assert [f.reason for f in res.exceptions] == ["approved_after_creation"]
    assert res.exceptions[0].evidence == "snapshot bound"
    assert provisioning.evaluate(inputs(b, HR, tickets=before)).exceptions == []


def test_no_ticketing_source_is_never_a_pass(sb):
    res = provisioning.evaluate(inputs(sb, HR, ticket_sources=False))
    assert res.status == "fail"      # the new account has no ticket
    assert not res.complete and "no ticketing source" in res.limitations[0]


def test_service_accounts_are_excluded(tmp_path):
    b = StoreBuilder(tmp_path / "s3")
    b.accounts("2026-01-01T02:00Z", [], since="2025-10-01T00:00Z")
    b.accounts("2026-02-02T02:00Z", [account("ci-bot", email="", kind="service")])
    b.accounts("2026-04-01T02:00Z", [account("ci-bot", email="", kind="service")])
    res = provisioning.evaluate(inputs(b, HR))
    assert res.population_size == 0 and list(res.excluded["account"]) == ["ci-bot"]


def test_coverage_shortfall_is_a_limitation(tmp_path):
    b = StoreBuilder(tmp_path / "s4")
    b.accounts("2026-02-01T02:00Z", [], since="2026-01-25T00:00Z")   # starts mid-period
    b.accounts("2026-04-01T02:00Z", [])
    res = provisioning.evaluate(inputs(b, HR))
    assert res.status == "not_evaluable"
    assert any("after the period start" in lim for lim in res.limitations)


# ---- role-change-approved ------------------------------------------------------------------

MOVE = ("new@corp.com", "new", "department", "Sales", "Finance", ts("2026-03-01T02:00Z"),
        ts("2026-03-02T02:05Z"))


@pytest.mark.parametrize("tickets, expected", [
    ([], "no_ticket"),
    ([ticket("RC-1", "new@corp.com", kind="role_change", approved_at="2026-03-01T01:00Z",
             approver="boss@corp.com")], None),
    ([ticket("RC-2", "new@corp.com", kind="role_change", approved_at="2026-03-01T12:00Z",
             approver="boss@corp.com")], "approved_after_change"),
    ([ticket("RC-3", "new@corp.com", kind="role_change", approved_at="2026-03-01T01:00Z",
             approver="new@corp.com")], "self_approved"),
    ([ticket("RC-4", "new@corp.com", kind="role_change", status="rejected")],
     "ticket_not_approved"),
    ([ticket("RC-5", "new@corp.com", kind="offboarding", approved_at="2026-03-01T01:00Z",
             approver="boss@corp.com")], "no_ticket"),
])
def test_hr_movers(sb, tickets, expected):
    res = role_changes.evaluate(inputs(sb, HR, tickets=tickets, hr_changes=[MOVE]))
    assert [f.reason for f in res.exceptions] == ([expected] if expected else [])
    if expected:
        f = res.exceptions[0]
        assert (f.source, f.account) == ("hr", "new@corp.com")
        assert "department changed from 'Sales' to 'Finance'" in f.detail


def test_privileged_grant_from_an_audit_event(tmp_path):
    b = StoreBuilder(tmp_path / "s5")
    admin = account("new@corp.com")
    admin["privileged"] = True
    b.accounts("2026-02-01T02:00Z", [account("new@corp.com")], since="2025-12-01T00:00Z")
    b.accounts("2026-02-02T02:00Z", [admin],
               events=[event("role_changed", "2026-02-01T15:00Z", "new@corp.com")])
    ok = [ticket("RC-6", "new@corp.com", kind="role_change", approved_at="2026-02-01T14:00Z",
                 approver="boss@corp.com")]
    late = [ticket("RC-6", "new@corp.com", kind="role_change", approved_at="2026-02-01T16:00Z",
                   approver="boss@corp.com")]
    assert role_changes.evaluate(inputs(b, HR, tickets=ok)).exceptions == []
    res = role_changes.evaluate(inputs(b, HR, tickets=late))
    assert [(f.source, f.account, f.reason, f.evidence) for f in res.exceptions] == [
        ("aws-prod", "new@corp.com", "approved_after_change", "audit event")]


def test_hr_snapshots_must_reach_the_period_start(sb):
    res = role_changes.evaluate(inputs(sb, HR, hr_first="2026-01-15T00:00Z"))
    assert res.status == "not_evaluable"


def test_offboarding_ticket_shown_beside_the_disable(tmp_path):
    b = StoreBuilder(tmp_path / "s6")
    hr = people(person("gone@corp.com", terminated="2026-02-10"), person("x@corp.com",
                                                                       terminated="2026-02-10"))
    b.accounts("2026-02-01T02:00Z", [account("gone@corp.com"), account("x@corp.com")])
    b.accounts("2026-02-11T02:00Z", [account("gone@corp.com", enabled=False),
                                     account("x@corp.com", enabled=False)])
    off = [ticket("OFF-1", "gone@corp.com", kind="offboarding", requested_at="2026-02-09T00:00Z",
                  resolved_at="2026-02-10T20:00Z", approved_at="2026-02-09T01:00Z",
                  approver="boss@corp.com")]
    res = deprovisioning.evaluate(inputs(b, hr, tickets=off))
    pop = res.population.set_index("account")
    assert pop.loc["gone@corp.com", "offboarding_ticket"] == "OFF-1"
    assert pop.isna().loc["x@corp.com", "offboarding_ticket"]
    assert res.exceptions == [] and "no offboarding ticket" in res.notes[0]
