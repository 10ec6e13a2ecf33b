"""A realistic small ``Evidence`` for the report tests.

Two sources (AWS IAM ok, Entra ID degraded with an unrecoverable gap), three controls
(deprovisioning-timely fails, no-access-after-termination is not evaluable, orphaned-accounts
fails and has an allowlisted service account), and identity data an attacker controls:
display names that are HTML, and a name that is a spreadsheet formula.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pandas as pd

from collector.periods import parse_period
from collector.results import ControlResult, Evidence, Finding, SnapshotRef, SourceReport
from collector.store import SnapshotStore

SCRIPT_NAME = "<script>alert(1)</script>"
ATTACHMENT_NAME = '<link rel="attachment" href="file:///etc/passwd">'
FORMULA_NAME = '=HYPERLINK("http://x")'
FORMULA_PERSON = "@SUM(1+1)"

UTC = dt.timezone.utc


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def _snapshots(source: str, source_type: str, days: list[str], store_root: Path | None,
               principal: str) -> list[SnapshotRef]:
    """Daily 02:00 collections; real snapshot directories when a store is given."""
    refs = []
    for day in days:
        started = ts(f"{day} 02:00:00")
        finished = started + pd.Timedelta(minutes=3, seconds=12)
        if store_root is None:
            path = f"snapshots/{source}/{started.strftime('%Y%m%dT%H%M%S%fZ')}"
            digest = hashlib.sha256(f"{source} {day}".encode()).hexdigest()
        else:
            writer = SnapshotStore(store_root).begin(source, source_type, started.to_pydatetime())
            snap = writer.commit(finished_at=finished.to_pydatetime(), principal=principal,
                                 instances=["123456789012"],
                                 window=(started - pd.Timedelta(days=1), started))
            path = snap.path.relative_to(store_root).as_posix()
            digest = snap.manifest_sha256
        refs.append(SnapshotRef(source, path, digest, started, finished, "ok"))
    return refs


def _sources(store_root: Path | None) -> list[SourceReport]:
    aws_principal = "arn:aws:sts::123456789012:assumed-role/accessproof-read/collector"
    aws = SourceReport(
        name="aws-prod", type="aws_iam", status="ok", error=None, limitations=[],
        coverage_start=ts("2025-10-02 02:00"), coverage_end=ts("2026-04-01 02:03"),
        records={"accounts": 48, "events": 1210},
        snapshots=_snapshots("aws-prod", "aws_iam",
                             ["2026-01-01", "2026-02-01", "2026-03-01", "2026-04-01"],
                             store_root, aws_principal),
        gaps=[],
        ipe={
            "principal": aws_principal,
            "instances": ["123456789012"],
            "window": {"start": "2026-03-31T02:00:00Z", "end": "2026-04-01T02:00:00Z"},
            "requests": {
                "iam.GetAccountAuthorizationDetails": {
                    "endpoint": "https://iam.amazonaws.com/", "parameters": {"Filter": ["User"]},
                    "pages": 2, "records": 48,
                    "file": "raw/iam.GetAccountAuthorizationDetails.jsonl.gz"},
                "cloudtrail.LookupEvents": {
                    "endpoint": "https://cloudtrail.us-east-1.amazonaws.com/",
                    "parameters": {"StartTime": "2026-03-31T02:00:00Z",
                                   "EndTime": "2026-04-01T02:00:00Z"},
                    "pages": 13, "records": 1210,
                    "file": "raw/cloudtrail.LookupEvents.jsonl.gz"},
            },
            "tables": {"accounts": {"file": "tables/accounts.parquet", "records": 48},
                       "events": {"file": "tables/events.parquet", "records": 1210}},
            "tool_version": "0.1.0",
            "started_at": "2026-04-01T02:00:00Z", "finished_at": "2026-04-01T02:03:12Z",
        },
        log_retention_days=90,
    )
    entra = SourceReport(
        name="entra", type="entra_id", status="degraded", error=None,
        limitations=["signInActivity is not returned (tenant without an Entra ID P1 licence): "
                     "last sign-in times are unknown"],
        coverage_start=ts("2026-01-05 02:00"), coverage_end=ts("2026-04-01 02:04"),
        records={"accounts": 61, "events": 342},
        snapshots=_snapshots("entra", "entra_id", ["2026-01-05", "2026-02-09", "2026-02-21",
                                                   "2026-04-01"], store_root,
                             "app:11111111-1111-1111-1111-111111111111"),
        gaps=[{"start": ts("2026-02-09 02:00"), "end": ts("2026-02-21 02:00"), "days": 12.0,
               "unrecoverable": True},
              {"start": ts("2026-03-02 02:00"), "end": ts("2026-03-05 02:00"), "days": 3.0,
               "unrecoverable": False}],
        ipe={
            "principal": "app:11111111-1111-1111-1111-111111111111",
            "instances": ["00000000-0000-0000-0000-000000000000"],
            "window": {"start": "2026-03-25T02:00:00Z", "end": "2026-04-01T02:00:00Z"},
            "requests": {
                "graph.users": {"endpoint": "https://graph.microsoft.com/v1.0/users",
                                "parameters": {"$select": "id,userPrincipalName,mail,"
                                               "accountEnabled,createdDateTime"},
                                "pages": 1, "records": 61},
                "graph.directoryAudits": {
                    "endpoint": "https://graph.microsoft.com/v1.0/auditLogs/directoryAudits",
                    "parameters": {"$filter": "activityDateTime ge 2026-03-25T02:00:00Z"},
                    "pages": 4, "records": 342},
            },
            "tables": {"accounts": {"records": 61}, "events": {"records": 342}},
            "started_at": "2026-04-01T02:00:00Z", "finished_at": "2026-04-01T02:04:40Z",
        },
        log_retention_days=7,
    )
    return [aws, entra]


def _terminations(n: int = 6) -> pd.DataFrame:
    people = [("P-1001", "alice.ng@corp.example", "Alice Ng"),
              ("P-1002", "bob.tables@corp.example", "Bob Tables"),
              ("P-1003", "carol.diaz@corp.example", "Carol Diaz"),
              ("P-1004", "dan.okafor@corp.example", FORMULA_PERSON),
              ("P-1005", "erin.walsh@corp.example", "Erin Walsh"),
              ("P-1006", "femi.adeyemi@corp.example", "Femi Adeyemi")]
    rows = []
    for i in range(n):
        pid, email, name = people[i % len(people)]
        if i >= len(people):
            pid, email = f"P-{2000 + i}", f"user{i}@corp.example"
        rows.append({"person_id": pid, "email": email, "name": name,
                     "terminated_on": dt.date(2026, 1, 10) + dt.timedelta(days=i % 80),
                     "termination_effective": ts("2026-01-11 05:00") + pd.Timedelta(days=i % 80)})
    return pd.DataFrame(rows)


def _deprovisioning_population(n: int) -> pd.DataFrame:
    """The columns the real control writes (result, hours_to_disable ...) plus a list column."""
    base = _terminations(n)
    base["source"] = ["aws-prod" if i % 2 == 0 else "entra" for i in range(n)]
    base["account"] = base["email"]
    hours = [round((i * 7.3) % 40 + 0.5, 2) for i in range(n)]
    result = ["on_time" if h <= 24 else "disabled_late" for h in hours]
    for i in range(n):
        if i % 11 == 10:
            hours[i], result[i] = None, "still_enabled"
        elif i % 13 == 12:
            hours[i], result[i] = None, "disable_time_unknown"
    base["result"] = result
    base["hours_to_disable"] = pd.array(hours, dtype="Float64")
    base["disabled_at"] = [t + pd.Timedelta(hours=h) if h is not None else pd.NaT
                           for t, h in zip(base["termination_effective"], hours)]
    base["basis"] = "audit event"
    base["hours_over_sla"] = pd.array([h - 24 if h is not None and h > 24 else None
                                       for h in hours], dtype="Float64")
    base["groups"] = [["engineering", "vpn"] for _ in range(n)]
    return base


def _orphan_population(n: int) -> pd.DataFrame:
    rows = [{"source": "aws-prod", "login": f"svc-{i}" if i else "finance-export",
             "display_name": FORMULA_NAME if i == 0 else f"Account {i}",
             "email": None, "enabled": True, "created_at": ts("2025-06-01") + pd.Timedelta(days=i),
             "privileged": i % 5 == 0}
            for i in range(n)]
    return pd.DataFrame(rows)


def make_evidence(*, store_root: Path | None = None, extra_exceptions: int = 0,
                  population: int = 40, in_progress: bool = False,
                  generated_at: dt.datetime | None = None) -> Evidence:
    period = parse_period("2026-Q2" if in_progress else "2026-Q1")
    if generated_at is None:
        generated_at = (dt.datetime(2026, 5, 14, 9, 30, 5, tzinfo=UTC) if in_progress
                        else dt.datetime(2026, 4, 2, 6, 0, 0, tzinfo=UTC))
    judged_until = period.judged_until(generated_at)

    late = [
        Finding("deprovisioning-timely", "disabled_late", "aws-prod", "bob.tables",
                "bob.tables@corp.example", "P-1002",
                "console password removed 52.5 h after termination (SLA 24 h)",
                display_name=SCRIPT_NAME, evidence="audit event",
                terminated_at=ts("2026-02-13 05:00"), disabled_at=ts("2026-02-15 09:30"),
                hours_over_sla=28.5),
        Finding("deprovisioning-timely", "still_enabled", "entra",
                "carol.diaz@corp.onmicrosoft.com", "carol.diaz@corp.example", "P-1003",
                "account enabled in the latest snapshot (2026-04-01 02:00 UTC)",
                display_name=ATTACHMENT_NAME, evidence="snapshot",
                terminated_at=ts("2026-03-20 04:00"), disabled_at=None, hours_over_sla=262.0),
        Finding("deprovisioning-timely", "disable_time_unknown", "entra",
                "erin.walsh@corp.onmicrosoft.com", "erin.walsh@corp.example", "P-1005",
                "disabled between 2026-02-09 02:00 and 2026-02-21 02:00 UTC; the collection gap "
                "is longer than Entra's 7-day audit log retention",
                display_name="Erin Walsh", evidence="snapshot bound",
                terminated_at=ts("2026-02-12 05:00"), disabled_at=ts("2026-02-21 02:00")),
    ]
    for i in range(extra_exceptions):
        late.append(Finding("deprovisioning-timely", "disabled_late", "aws-prod", f"user{i}",
                            f"user{i}@corp.example", f"P-{3000 + i}",
                            f"access key deactivated {30 + i % 50} h after termination",
                            display_name=f"User {i}", evidence="audit event",
                            terminated_at=ts("2026-03-01 05:00"),
                            disabled_at=ts("2026-03-02 11:00"), hours_over_sla=6.0 + i % 50))

    orphans = [
        Finding("orphaned-accounts", "no_hr_record", "aws-prod", "finance-export", None, None,
                "enabled IAM user with a console password and no matching HR record",
                display_name=FORMULA_NAME, evidence="snapshot"),
        Finding("orphaned-accounts", "terminated_before_period", "entra",
                "gus.lind@corp.onmicrosoft.com", "gus.lind@corp.example", "P-0877",
                "person left on 2025-11-28; account still enabled at 2026-04-01 02:00 UTC; "
                "offboarding ticket https://corp.atlassian.net/browse/OFF-311 still open",
                display_name="Gus Lind", evidence="snapshot",
                terminated_at=ts("2025-11-29 05:00")),
    ]
    allowlisted = pd.DataFrame([{"source": "aws-prod", "account": "ci-deployer",
                                 "owner": "platform@corp.example", "reason": "CI deploy user",
                                 "expires": dt.date(2027, 6, 30)}])

    controls = [
        ControlResult(
            id="deprovisioning-timely", title="Access removed within the SLA after termination",
            description="For every person terminated in the period and every account linked to "
                        "them, the account was disabled within 24 hours of the effective "
                        "termination time.",
            complete=True, limitations=[],
            population=_deprovisioning_population(population // 4 or 1), exceptions=late),
        ControlResult(
            id="no-access-after-termination", title="No sign-in after termination",
            description="No linked account of a terminated person signed in successfully after "
                        "the effective termination time.",
            complete=False,
            limitations=["entra: last successful sign-in times are not available (no Entra ID "
                         "P1 licence) and the sign-in log does not reach back to every "
                         "termination; 4 linked accounts cannot be judged"],
            population=_deprovisioning_population(population // 4 or 1), exceptions=[]),
        ControlResult(
            id="orphaned-accounts", title="No enabled account without a current HR record",
            description="Every account enabled at the period end belongs to a person employed "
                        "at the period end, or is an allowlisted service account.",
            complete=True, limitations=[],
            population=_orphan_population(population), exceptions=orphans,
            excluded=allowlisted,
            notes=["Service accounts on the allowlist are excluded and listed below."]),
    ]
    return Evidence(
        period=period, generated_at=generated_at, judged_until=judged_until,
        tool_version="0.1.0", sources=_sources(store_root), controls=controls,
        policy={"deprovision_sla_hours": 24.0, "login_grace_minutes": 0.0,
                "approval_grace_minutes": 0.0, "inactive_days": 90},
        config_digest={"sha256": "9f2c4e8d1b7a6f3e5d0c2b1a9e8f7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e",
                       "config": {"store": {"path": "./evidence"},
                                  "sources": [{"name": "entra", "type": "entra_id",
                                               "client_secret": "env:ENTRA_CLIENT_SECRET"}],
                                  "service_accounts": {"expires": dt.date(2027, 6, 30)}}},
        hr_timezone="America/New_York",
        extra_populations={"terminations": _terminations()},
    )


# --- scale --------------------------------------------------------------------------------------

def _scale_snapshots(source: str, days: int, start: pd.Timestamp, skip: set[int]) -> list[SnapshotRef]:
    refs = []
    for day in range(days):
        if day in skip:
            continue
        started = start + pd.Timedelta(days=day, hours=2)
        digest = hashlib.sha256(f"{source} {day}".encode()).hexdigest()
        refs.append(SnapshotRef(source, f"snapshots/{source}/{started.strftime('%Y%m%dT%H%M%S%fZ')}",
                                digest, started, started + pd.Timedelta(minutes=4, seconds=7),
                                "ok"))
    return refs


def make_scale_evidence(*, exceptions: int = 3000, people: int = 100_000, days: int = 90,
                        seed: int = 7) -> Evidence:
    """The benchmark organisation as judged evidence: ``people`` people, 1.1 accounts each,
    ``days`` daily snapshots of HR and AWS, 3 % leavers, and ``exceptions`` exceptions spread
    over four controls (40 % deprovisioning, 35 % orphaned accounts, 15 % provisioning,
    10 % sign-in after termination). Built vectorised: seconds for 100,000 people."""
    import numpy as np

    rng = np.random.default_rng(seed)
    period = parse_period("2026-Q1")
    start = period.start
    generated_at = dt.datetime(2026, 4, 1, 6, 0, tzinfo=UTC)
    ids = np.arange(people)
    emails = np.array([f"user{i:06d}@corp.example" for i in ids], dtype=object)
    admins = ids[ids % 10 == 3]
    n_acc = people + len(admins)
    acc_owner = np.concatenate([ids, admins])
    acc_login = np.concatenate([emails, np.array([f"adm-{i:06d}" for i in admins], dtype=object)])

    n_dep = int(exceptions * 0.40)
    n_orph = int(exceptions * 0.35)
    n_prov = int(exceptions * 0.15)
    n_login = exceptions - n_dep - n_orph - n_prov

    # leavers: 3 % of people, their accounts are the deprovisioning population
    leavers = np.sort(rng.choice(people, max(int(people * 0.03), n_dep, n_login, 1),
                                 replace=False))
    leave_acc = np.flatnonzero(np.isin(acc_owner, leavers))
    term = start + pd.to_timedelta(rng.integers(0, days - 2, len(leave_acc)), unit="D") \
        + pd.Timedelta(hours=5)
    hours = rng.gamma(2.0, 4.0, len(leave_acc)).round(2)
    result = np.where(hours <= 24, "on_time", "disabled_late").astype(object)
    late_idx = np.arange(n_dep)                   # the first n_dep items are the exceptions
    hours[late_idx] = (rng.uniform(25, 120, n_dep)).round(2)
    result[late_idx] = "disabled_late"
    still = late_idx[::7]
    result[still] = "still_enabled"
    hours_f = pd.array(np.where(result == "still_enabled", np.nan, hours), dtype="Float64")
    owners = acc_owner[leave_acc]
    dep_pop = pd.DataFrame({
        "person_id": [f"P{o:06d}" for o in owners], "email": emails[owners],
        "name": [f"Person {o}" for o in owners], "worker_type": "employee",
        "terminated_on": [t.date() for t in term], "termination_effective": term,
        "source": "aws-prod", "account": acc_login[leave_acc], "display_name": acc_login[leave_acc],
        "result": result, "disabled": "", "basis": "audit event",
        "hours_to_disable": hours_f,
        "hours_over_sla": pd.array(np.where(hours > 24, hours - 24, np.nan), dtype="Float64")})
    dep_findings = [
        Finding("deprovisioning-timely", r, "aws-prod", a, e, p,
                "account enabled in the latest snapshot (2026-04-01 02:00 UTC)" if r == "still_enabled"
                else f"access key deactivated {h:.1f} h after termination (SLA 24 h)",
                display_name=f"Person {p[1:]}", evidence="snapshot" if r == "still_enabled"
                else "audit event", terminated_at=t,
                disabled_at=None if r == "still_enabled" else t + pd.Timedelta(hours=float(h)),
                hours_over_sla=round(float(h) - 24, 2))
        for r, a, e, p, t, h in zip(result[:n_dep], acc_login[leave_acc][:n_dep],
                                    emails[owners][:n_dep],
                                    [f"P{o:06d}" for o in owners[:n_dep]], term[:n_dep],
                                    hours[:n_dep])]

    login_pop = dep_pop[["person_id", "email", "name", "worker_type", "termination_effective",
                         "source", "account", "display_name"]].copy()
    login_pop["result"] = "no_login"
    login_pop.loc[login_pop.index[:n_login], "result"] = "login_after_termination"
    login_pop["evidence"] = "audit events"
    login_findings = [
        Finding("no-access-after-termination", "login_after_termination", "aws-prod", a, e, p,
                f"ConsoleLogin success at {t + pd.Timedelta(minutes=30):%Y-%m-%d %H:%M} UTC, "
                "30 minutes after termination", display_name=f"Person {p[1:]}",
                evidence="audit event", terminated_at=t)
        for a, e, p, t in zip(login_pop["account"][:n_login], login_pop["email"][:n_login],
                              login_pop["person_id"][:n_login],
                              login_pop["termination_effective"][:n_login])]

    # orphaned accounts: every enabled account at the period end, plus the planted orphans
    enabled = ~np.isin(acc_owner, leavers)
    orph_login = np.array([f"orphan-{i:05d}" for i in range(n_orph)], dtype=object)
    orph_pop = pd.DataFrame({
        "source": "aws-prod", "instance": "123456789012",
        "account": np.concatenate([acc_login[enabled], orph_login]),
        "display_name": np.concatenate([acc_login[enabled], orph_login]),
        "email": np.concatenate([emails[acc_owner[enabled]], [None] * n_orph]),
        "kind": "human", "privileged": np.concatenate([acc_owner[enabled] % 50 == 0,
                                                        np.zeros(n_orph, bool)]),
        "as_of": pd.Timestamp("2026-04-01T02:00Z"),
        "linked_person": np.concatenate([emails[acc_owner[enabled]], [None] * n_orph]),
        "result": np.concatenate([np.full(enabled.sum(), "ok", dtype=object),
                                  np.full(n_orph, "no_hr_record", dtype=object)])})
    orph_findings = [Finding("orphaned-accounts", "no_hr_record", "aws-prod", a, None, None,
                             "enabled IAM user with a console password and no matching HR "
                             "record", display_name=FORMULA_NAME if i == 0 else a,
                             evidence="snapshot")
                     for i, a in enumerate(orph_login)]

    # provisioning: accounts created in the period, some without a ticket
    n_new = max(int(people * 0.02), n_prov)
    created = start + pd.to_timedelta(rng.integers(0, days * 24, n_new), unit="h")
    prov_pop = pd.DataFrame({
        "source": "aws-prod", "account": [f"new{i:05d}@corp.example" for i in range(n_new)],
        "email": [f"new{i:05d}@corp.example" for i in range(n_new)],
        "display_name": [f"New {i}" for i in range(n_new)], "kind": "human",
        "created": [f"{c:%Y-%m-%d %H:%M} UTC (audit event)" for c in created],
        "created_lower": created, "created_upper": created, "basis": "audit event",
        "ticket": [f"ACCESS-{1000 + i}" for i in range(n_new)],
        "ticket_url": [f"https://corp.atlassian.net/browse/ACCESS-{1000 + i}" for i in range(n_new)],
        "result": "approved"})
    prov_pop.loc[prov_pop.index[:n_prov], ["ticket", "ticket_url", "result"]] = \
        [None, None, "no_ticket"]
    prov_findings = [Finding("provisioning-approved", "no_ticket", "aws-prod", a, a, None,
                             "no access request ticket for this creation; nearest: "
                             f"https://corp.atlassian.net/browse/ACCESS-{900 + i}",
                             display_name=f"New {i}", evidence="audit event")
                     for i, a in enumerate(prov_pop["account"][:n_prov])]

    hr_cols = {"person_id": [f"P{i:06d}" for i in leavers], "email": emails[leavers],
               "name": [f"Person {i}" for i in leavers], "department": "Engineering",
               "title": "Engineer", "worker_type": "employee",
               "hired_on": dt.date(2021, 3, 1),
               "terminated_on": [(start + pd.Timedelta(days=int(d))).date()
                                 for d in rng.integers(0, days, len(leavers))]}
    extra = {"hr-terminations": pd.DataFrame(hr_cols),
             "hr-new-hires": pd.DataFrame({"person_id": [f"N{i:05d}" for i in range(n_new)],
                                           "email": prov_pop["email"], "hired_on":
                                           [c.date() for c in created]})}

    def control(cid, title, desc, pop, findings):
        return ControlResult(id=cid, title=title, description=desc, complete=True,
                             limitations=[], population=pop, exceptions=findings)

    controls = [
        control("provisioning-approved", "Accounts created only after an approved access request",
                "Every human account created in the period is backed by an access-request "
                "ticket approved before the account was created.", prov_pop, prov_findings),
        control("deprovisioning-timely", "Leavers' accounts disabled within the SLA",
                "For every termination effective in the period and every account linked to the "
                "person, the account is disabled no later than the SLA after the termination.",
                dep_pop, dep_findings),
        control("no-access-after-termination", "No sign-in after termination",
                "No linked account of a terminated person signed in after the termination.",
                login_pop, login_findings),
        control("orphaned-accounts", "No enabled account without a current HR record",
                "Every account enabled at the period end belongs to a current employee or is "
                "an allowlisted service account.", orph_pop, orph_findings),
    ]
    hr = SourceReport("hr", "csv", "ok", None, [], start - pd.Timedelta(days=1),
                      period.end + pd.Timedelta(hours=2), {"people": people},
                      _scale_snapshots("hr", days + 1, start, set()), [],
                      {"principal": "accessproof@collector", "instances": ["hr.csv"],
                       "tool_version": "0.1.0"})
    aws = SourceReport("aws-prod", "aws_iam", "ok", None, [], start - pd.Timedelta(days=88),
                       period.end + pd.Timedelta(hours=2),
                       {"accounts": n_acc, "events": 2000 * days},
                       _scale_snapshots("aws-prod", days + 1, start, {40, 41, 42}),
                       [{"start": start + pd.Timedelta(days=39, hours=2),
                         "end": start + pd.Timedelta(days=43, hours=2), "days": 4.0,
                         "unrecoverable": False, "note": "bridged by the stored audit events"}],
                       {"principal": "arn:aws:iam::123456789012:user/bench",
                        "instances": ["123456789012"],
                        "window": {"start": "2026-03-31T01:00:00Z", "end": "2026-04-01T02:00:00Z"},
                        "requests": {"iam.GetAccountAuthorizationDetails": {
                            "endpoint": "https://iam.amazonaws.com/",
                            "parameters": {"Filter": ["User"]}, "pages": n_acc // 1000 + 1,
                            "records": n_acc}},
                        "tool_version": "0.1.0"},
                       log_retention_days=90)
    return Evidence(
        period=period, generated_at=generated_at,
        judged_until=period.judged_until(generated_at), tool_version="0.1.0",
        sources=[hr, aws], controls=controls,
        policy={"deprovision_sla_hours": 24.0, "login_grace_minutes": 0.0,
                "approval_grace_minutes": 0.0, "inactive_days": 90},
        config_digest={"sha256": "0" * 64, "config": {}}, hr_timezone="UTC",
        extra_populations=extra)
