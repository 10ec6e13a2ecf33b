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
    base = _terminations(n)
    base["source"] = ["aws-prod" if i % 2 == 0 else "entra" for i in range(n)]
    base["account"] = base["email"]
    base["disabled_at"] = base["termination_effective"] + pd.Timedelta(hours=3)
    base["basis"] = "audit event"
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
                "person left on 2025-11-28; account still enabled at 2026-04-01 02:00 UTC",
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
