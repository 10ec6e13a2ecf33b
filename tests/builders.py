"""Small builders for control and timeline tests: people frames and stored snapshots."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd

from collector.config import PolicyConfig
from collector.controls import ControlInputs, SourceState
from collector.periods import parse_period
from collector.schema import conform
from collector.store import SnapshotStore
from collector.timeline import build_timeline

UTC = dt.timezone.utc


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC") if pd.Timestamp(text).tzinfo else \
        pd.Timestamp(text, tz="UTC")


def person(email, *, person_id=None, hired="2024-01-01", terminated=None, tz="UTC",
           effective="end_of_day", aliases=(), worker_type="employee", name=None, **extra):
    hired_on = dt.date.fromisoformat(hired)
    terminated_on = dt.date.fromisoformat(terminated) if terminated else None
    eff = None
    if terminated_on:
        day = terminated_on + dt.timedelta(days=1) if effective == "end_of_day" else terminated_on
        eff = pd.Timestamp(dt.datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz)))
    return {"person_id": person_id or email.strip().lower().split("@")[0], "email": email,
            "aliases": list(aliases), "name": name or email, "worker_type": worker_type,
            "hired_on": hired_on, "terminated_on": terminated_on,
            "termination_effective": eff, **extra}


def people(*rows) -> pd.DataFrame:
    return conform(pd.DataFrame(list(rows)), "people", source="hr")


def account(login, *, enabled=True, email=None, instance="111122223333", account_id=None,
            last_login_at=None, never_logged_in=False, kind="human", created_at=None,
            display_name=None):
    return {"source": "aws-prod", "instance": instance, "account_id": account_id or f"ID-{login}",
            "login": login, "email": email if email is not None else login,
            "display_name": display_name or login, "kind": kind, "enabled": enabled,
            "created_at": created_at, "disabled_at": None, "last_login_at": last_login_at,
            "privileged": False, "groups": [], "never_logged_in": never_logged_in}


def event(action, at, login, *, instance="111122223333", event_id=None, outcome="success"):
    return {"source": "aws-prod", "instance": instance, "at": ts(at), "action": action,
            "actor": "admin", "target_account": login, "target_email": None, "outcome": outcome,
            "event_id": event_id or f"{action}-{login}-{at}"}


class StoreBuilder:
    """Writes snapshots the way ``collect`` does, at chosen times."""

    def __init__(self, root):
        self.store = SnapshotStore(root)

    def accounts(self, at, rows, *, source="aws-prod", events=(), since=None, failed=False,
                 duration_minutes=5):
        start = ts(at)
        writer = self.store.begin(source, "aws_iam", start.to_pydatetime())
        finish = (start + pd.Timedelta(minutes=duration_minutes)).to_pydatetime()
        if failed:
            return writer.fail("source 'aws-prod': AccessDenied", finished_at=finish)
        writer.write_table("accounts", pd.DataFrame(rows) if rows else
                           pd.DataFrame(columns=["source", "instance", "account_id", "login",
                                                 "enabled"]))
        writer.write_table("events", pd.DataFrame(list(events)) if events else
                           pd.DataFrame(columns=["source", "instance", "at", "action",
                                                 "event_id"]))
        window_start = ts(since) if since else start - pd.Timedelta(days=90)
        return writer.commit(finished_at=finish, principal="arn:test", instances=["111122223333"],
                             window=(window_start.to_pydatetime(), start.to_pydatetime()))

    def timeline(self, source="aws-prod"):
        return build_timeline(source, "aws_iam", self.store.good_snapshots(source))


def ticket(key, subject, *, kind="access_request", target="aws-prod", approved_at=None,
           approver=None, status=None, requested_at="2025-12-01T00:00Z", resolved_at=None):
    return {"system": "jira", "key": key, "kind": kind, "subject_email": subject,
            "target_system": target, "requested_at": ts(requested_at),
            "approved_at": ts(approved_at) if approved_at else None,
            "approver_email": approver, "resolved_at": ts(resolved_at) if resolved_at else None,
            "status": status or ("approved" if approved_at else "pending"),
            "url": f"https://jira.example/browse/{key}", "summary": f"ticket {key}"}


def inputs(store: StoreBuilder, people_frame, *, period="2026-Q1", now="2026-04-02T12:00Z",
           policy=None, allowlist=(), source_ok=True, hr_tz="UTC", tickets=None,
           ticket_sources=True, hr_changes=None, hr_first="2025-12-31T00:00Z"):
    tl = store.timeline()
    extra = {}
    if hr_changes is not None:
        extra["hr_changes"] = pd.DataFrame(hr_changes, columns=[
            "person", "person_id", "field", "old", "new", "lower", "upper"])
    return ControlInputs(
        period=parse_period(period), now=ts(now), policy=policy or PolicyConfig(),
        hr_timezone=hr_tz, people=people_frame,
        hr=SourceState("hr", "csv", ok=True, has_snapshot=True),
        account_sources=[SourceState("aws-prod", "aws_iam", ok=source_ok, has_snapshot=True)],
        timelines={"aws-prod": tl}, allowlist=list(allowlist),
        tickets=conform(pd.DataFrame(list(tickets or [])) if tickets else
                        pd.DataFrame(columns=["system", "key", "kind"]), "tickets", source="t"),
        ticket_sources=[SourceState("jira", "jira", ok=True, has_snapshot=True)]
        if ticket_sources else [],
        hr_first_snapshot=ts(hr_first) if hr_first else None, **extra)
