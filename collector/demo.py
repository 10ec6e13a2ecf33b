"""`accessproof demo`: a seeded synthetic organisation, served by the local emulators, run through
the real collect → pack path (no network, no credentials).

About 200 people over the last full quarter: joiners, leavers (most disabled on time), and one
planted case of every exception the controls know. The organisation lives in moto (IAM) and the
project's CloudTrail emulator; the collector talks to both with boto3 over HTTP on 127.0.0.1,
once per simulated day, exactly as it would in production.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import boto3
import pandas as pd

from .config import load_config
from .errors import ConfigError
from .periods import Period, parse_period
from .pipeline import build_evidence, collect
from .store import utc_now

SEED = 2026
DOMAIN = "corp.example"
HR_TZ = "America/New_York"
ACCOUNT_ID = "123456789012"
MARKER = ".accessproof-demo"
JIRA_EMAIL = "compliance-bot@corp.example"
JIRA_TOKEN = "demo-jira-token"        # served by the local emulator only
ENTRA_TENANT = "8f3c2a6e-1b7d-4c9a-9e55-0d2b7a1c4f10"
ENTRA_CLIENT = "5d0c3e8a-7f41-4b6e-a2c9-3e1f9b7d6a20"
ENTRA_SECRET = "demo-entra-secret"     # served by the local emulator only
GOOGLE_ADMIN = "admin@corp.example"
COLLECT_HOUR = 2                      # daily snapshot at 02:00 UTC
OUTAGE_DAYS = (40, 41, 42)            # days into the period with no collection (a coverage gap)
UTC = dt.timezone.utc

FIRST = ["Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
         "Liam", "Maya", "Noor", "Oscar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera",
         "Wei", "Ximena", "Yusuf", "Zoe"]
LAST = ["Adams", "Brown", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Haddad", "Ito", "Jones",
        "Khan", "Lopez", "Moreau", "Novak", "Okafor", "Patel", "Rossi", "Singh", "Tanaka", "Ueda",
        "Varga", "Weber", "Xu", "Yilmaz", "Zhou"]
DEPARTMENTS = {"Engineering": ["Software Engineer", "SRE", "Engineering Manager"],
               "Finance": ["Accountant", "Controller"], "Sales": ["Account Executive", "SDR"],
               "People": ["HR Partner", "Recruiter"], "Support": ["Support Engineer"]}


@dataclass
class Employment:
    person_id: str
    name: str
    email: str
    user_name: str                 # IAM user name: the email, or a short name with an email tag
    department: str
    title: str
    worker_type: str
    hired_on: dt.date
    terminated_on: dt.date | None = None
    aliases: list[str] = field(default_factory=list)
    moves: list[tuple[dt.date, str, str]] = field(default_factory=list)   # (day, dept, title)

    def role_on(self, day: dt.date) -> tuple[str, str]:
        dept, title = self.department, self.title
        for moved_on, new_dept, new_title in sorted(self.moves):
            if moved_on <= day:
                dept, title = new_dept, new_title
        return dept, title


@dataclass(order=True)
class Change:
    """Something that happens to the organisation at a moment (applied before a collection)."""

    at: dt.datetime
    kind: str = field(compare=False)   # create | disable | delete | enable | login | grant
    user: str = field(compare=False)
    events: bool = field(default=True, compare=False)   # False: CloudTrail missed it
    tags: dict = field(default_factory=dict, compare=False)


def _local_midnight(day: dt.date) -> dt.datetime:
    from zoneinfo import ZoneInfo
    return dt.datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(HR_TZ)).astimezone(UTC)


def _effective(day: dt.date) -> dt.datetime:
    """end_of_day in the HR timezone: 00:00 of the next local day."""
    return _local_midnight(day + dt.timedelta(days=1))


def previous_quarter(today: dt.date) -> Period:
    q = (today.month - 1) // 3 + 1
    year, q = (today.year, q - 1) if q > 1 else (today.year - 1, 4)
    return parse_period(f"{year}-Q{q}")


class Organisation:
    """The seeded synthetic organisation: HR employments and every change to IAM, dated."""

    def __init__(self, period: Period, seed: int = SEED):
        self.period = period
        self.rng = random.Random(seed)
        self.employments: list[Employment] = []
        self.changes: list[Change] = []
        self.service_accounts = ["ci-deployer", "backup-agent", "temp-migration"]
        # Jira requests: (key, request type, subject, created, approvals, resolved, summary)
        self.tickets: list[tuple] = []
        self._names: set[str] = set()
        self._build()

    # ---- people -----------------------------------------------------------------------------
    def _new_person(self, hired_on: dt.date, *, worker_type="employee", short_name=False):
        while True:
            first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
            if (first, last) not in self._names:
                self._names.add((first, last))
                break
        email = f"{first}.{last}@{DOMAIN}".lower()
        if worker_type == "contractor":
            email = f"{first}.{last}@partner.example".lower()
        dept = self.rng.choice(sorted(DEPARTMENTS))
        emp = Employment(
            person_id=f"E{len(self.employments) + 1001}", name=f"{first} {last}", email=email,
            user_name=f"{first[0]}{last}".lower() if short_name else email, department=dept,
            title=self.rng.choice(DEPARTMENTS[dept]), worker_type=worker_type, hired_on=hired_on)
        self.employments.append(emp)
        return emp

    def _day(self, offset: int) -> dt.date:
        return (self.period.start + pd.Timedelta(days=offset)).date()

    def _hire(self, emp: Employment, *, at: dt.datetime | None = None):
        at = at or (_local_midnight(emp.hired_on) + dt.timedelta(hours=self.rng.randint(-30, -2)))
        self.changes.append(Change(at, "create", emp.user_name,
                                   tags={} if emp.user_name == emp.email else {"email": emp.email}))

    def _leave(self, emp: Employment, day: dt.date, *, after_hours: float | None = None,
               events: bool = True, kind: str = "disable"):
        emp.terminated_on = day
        if after_hours is not None:
            self.changes.append(Change(_effective(day) + dt.timedelta(hours=after_hours), kind,
                                       emp.user_name, events=events))

    def _build(self) -> None:
        rng = self.rng
        length = (self.period.end - self.period.start).days
        # the established workforce, hired over the last six years
        for i in range(170):
            hired = self._day(-rng.randint(120, 6 * 365))
            emp = self._new_person(hired, short_name=(i % 9 == 0),
                                   worker_type="contractor" if i % 23 == 0 else "employee")
            self._hire(emp, at=_local_midnight(hired) - dt.timedelta(hours=6))
        established = list(self.employments)
        rng.shuffle(established)
        pick = iter(established)

        # joiners in the period
        for _ in range(12):
            emp = self._new_person(self._day(rng.randint(3, length - 10)))
            self._hire(emp)

        # leavers in the period, disabled a few hours after the termination takes effect
        for _ in range(14):
            self._leave(next(pick), self._day(rng.randint(2, length - 5)),
                        after_hours=rng.uniform(0.5, 18))
        # ... one whose account is deleted outright
        self._leave(next(pick), self._day(20), after_hours=6, kind="delete")

        # planted exceptions, one of every kind
        self._leave(next(pick), self._day(30))                          # still_enabled
        self._leave(next(pick), self._day(35), after_hours=75)          # disabled_late, event
        self._leave(next(pick), self._day(50), after_hours=100, events=False)  # late, bounds
        unknown = next(pick)              # disabled without an event, bounds straddle the SLA
        self._leave(unknown, self._day(56), after_hours=23.5, events=False)
        snoop = next(pick)                                      # signs in after leaving
        self._leave(snoop, self._day(61), after_hours=40)
        self.changes.append(Change(_effective(self._day(61)) + dt.timedelta(hours=9), "login",
                                   snoop.user_name))
        # a Friday-evening leaver, disabled on Saturday night New York time: on time
        friday = next(d for d in (self._day(o) for o in range(63, 70)) if d.weekday() == 4)
        self._leave(next(pick), friday, after_hours=23)
        # a contractor who leaves, on time
        contractor = self._new_person(self._day(-400), worker_type="contractor")
        self._hire(contractor, at=_local_midnight(contractor.hired_on))
        self._leave(contractor, self._day(45), after_hours=2)
        # a rehire: leaves early in the period, comes back later, account re-enabled
        rehire = next(pick)
        self._leave(rehire, self._day(10), after_hours=3)
        back = Employment(**{**rehire.__dict__, "hired_on": self._day(70), "terminated_on": None,
                             "aliases": list(rehire.aliases)})
        self.employments.append(back)
        self.changes.append(Change(_local_midnight(back.hired_on) + dt.timedelta(hours=9),
                                   "enable", rehire.user_name))
        # someone with an alias: the IAM user is named after the alias
        aliased = next(pick)
        aliased.aliases = [aliased.email.replace("@", ".ops@")]
        for change in self.changes:
            if change.user == aliased.user_name:
                change.user = aliased.aliases[0]
        aliased.user_name = aliased.aliases[0]

        # left before the period: accounts removed then, except one still enabled
        for n in range(5):
            emp = next(pick)
            day = self._day(-rng.randint(20, 200))
            self._leave(emp, day, after_hours=None if n == 0 else 4,
                        kind="delete" if n % 2 else "disable")
        # ordinary sign-ins of current staff
        for emp in [e for e in established if e.terminated_on is None][:40]:
            self.changes.append(Change(self.period.start.to_pydatetime()
                                       + dt.timedelta(days=rng.randint(0, length - 1),
                                                      hours=rng.randint(13, 22)),
                                       "login", emp.user_name))
        # accounts of no one: service accounts (two allowlisted) and a forgotten temp user
        for name in self.service_accounts:
            self.changes.append(Change(self.period.start.to_pydatetime()
                                       - dt.timedelta(days=300), "create", name,
                                       tags={"account-type": "service"}))
        self._tickets(established)
        # Entra guests: a contractor invited under an external address (an HR alias), and a
        # guest no HR record knows
        self.guests = ["consultant@ext-advisors.example"]
        partner = next(e for e in established if e.terminated_on is None and not e.aliases
                       and e.user_name == e.email)
        partner.aliases.append(partner.email.split("@")[0] + "@partner-ext.example")
        self.guests.append(partner.aliases[-1])
        self.changes.sort()

    # ---- tickets ----------------------------------------------------------------------------
    def _ticket(self, kind, subject, created, approvals=(), resolved=None, summary="",
                target="aws-prod"):
        key = f"ACCESS-{len(self.tickets) + 101}"
        self.tickets.append((key, kind, subject, target, created, list(approvals), resolved,
                             summary))
        return key

    def _tickets(self, established: list[Employment]) -> None:
        """Access requests for joiners, offboarding for leavers, role changes for movers, with
        one planted case of every approval exception."""
        manager = next(e for e in established if e.terminated_on is None)
        creations = {c.user: c.at for c in self.changes if c.kind == "create"}
        joiners = [e for e in self.employments
                   if self.period.start.date() <= e.hired_on < self.period.end.date()
                   and e.user_name in creations and creations[e.user_name] >= self.period.start]
        for n, emp in enumerate(joiners):
            created = creations[emp.user_name]
            asked = created - dt.timedelta(days=6)
            approved_by, approved_at = manager.email, created - dt.timedelta(days=1)
            # Google Workspace and Entra ID accounts: requested and approved in advance
            for system in ("workspace", "entra"):
                self._ticket("Access Request", emp.email, asked,
                             [("approved", manager.email, created - dt.timedelta(days=1))],
                             resolved=created + dt.timedelta(minutes=20),
                             summary=f"{system} account for {emp.name}", target=system)
            if n == 0:        # AWS: approved five hours after the account was created
                approved_at = created + dt.timedelta(hours=5)
            elif n == 1:      # AWS: approved by the joiner themself
                approved_by = emp.email
            elif n == 2:      # AWS: no ticket at all
                continue
            elif n == 3:      # AWS: rejected, provisioned anyway
                self._ticket("Access Request", emp.email, asked,
                             [("declined", manager.email, created - dt.timedelta(days=2))],
                             summary=f"AWS access for {emp.name}")
                continue
            self._ticket("Access Request", emp.email, asked,
                         [("approved", approved_by, approved_at)],
                         resolved=created + dt.timedelta(minutes=20),
                         summary=f"AWS access for {emp.name}")
        # offboarding tickets for most leavers (a missing one is only informational)
        for emp in self.employments:
            if emp.terminated_on and self.period.start.date() <= emp.terminated_on \
                    < self.period.end.date() and emp.person_id[-1] not in "05":
                opened = _local_midnight(emp.terminated_on) - dt.timedelta(days=3)
                self._ticket("Offboarding", emp.email, opened,
                             [("approved", manager.email, opened + dt.timedelta(hours=2))],
                             resolved=_effective(emp.terminated_on) + dt.timedelta(hours=8),
                             summary=f"Leaver: {emp.name}")
        # movers: one approved in advance, one with no ticket
        movers = [e for e in established if e.terminated_on is None and e is not manager][:2]
        for n, emp in enumerate(movers):
            day = self._day(40 + 20 * n)
            emp.moves.append((day, "Finance" if emp.department != "Finance" else "Sales",
                              "Team Lead"))
            if n == 0:
                opened = _local_midnight(day) - dt.timedelta(days=5)
                self._ticket("Role Change", emp.email, opened,
                             [("approved", manager.email, opened + dt.timedelta(days=1))],
                             resolved=_local_midnight(day), summary=f"Transfer: {emp.name}")
        # privileged grants: one approved in advance, one after the fact
        grantees = [e for e in established if e.terminated_on is None
                    and e not in movers and e is not manager][:2]
        for n, emp in enumerate(grantees):
            at = self.period.start.to_pydatetime() + dt.timedelta(days=50 + 3 * n, hours=15)
            self.changes.append(Change(at, "grant", emp.user_name))
            approved = at - dt.timedelta(hours=3) if n == 0 else at + dt.timedelta(days=2)
            self._ticket("Role Change", emp.email, at - dt.timedelta(days=2),
                         [("approved", manager.email, approved)],
                         resolved=approved + dt.timedelta(hours=1),
                         summary=f"Admin access for {emp.name}")

    # ---- files ------------------------------------------------------------------------------
    def hr_rows(self, as_of: dt.datetime) -> list[dict]:
        """The HR export as it looked at ``as_of``: hires known two weeks ahead, terminations
        recorded a week ahead; the export is vendor-shaped (US dates, its own column names)."""
        rows = []
        horizon = as_of.date()
        for emp in self.employments:
            if emp.hired_on > horizon + dt.timedelta(days=14):
                continue
            term = emp.terminated_on if emp.terminated_on and \
                emp.terminated_on <= horizon + dt.timedelta(days=7) else None
            department, title = emp.role_on(horizon)
            rows.append({
                "Employee ID": emp.person_id, "Full Name": emp.name, "Work Email": emp.email,
                "Other Emails": ";".join(emp.aliases), "Department": department,
                "Job Title": title, "Worker Type": emp.worker_type.title(),
                "Hire Date": emp.hired_on.strftime("%m/%d/%Y"),
                "Termination Date": term.strftime("%m/%d/%Y") if term else ""})
        return rows

    def allowlist_toml(self) -> str:
        expired = (self.period.end - pd.Timedelta(days=20)).date()
        return (
            "# Service accounts that belong to no person: owner, reason and expiry make each\n"
            "# exclusion reviewable. From its expiry day on an entry no longer excludes.\n\n"
            '[[accounts]]\nsource = "aws-prod"\naccount = "ci-deployer"\n'
            'owner = "platform@corp.example"\nreason = "CI/CD deployments"\n'
            'expires = 2030-12-31\n\n'
            '[[accounts]]\nsource = "aws_iam"\naccount = "backup-agent"\n'
            f'owner = "it-ops@corp.example"\nreason = "nightly backups"\nexpires = {expired}\n')


def _config_text(moto_url: str, cloudtrail_url: str, jira_url: str, google, graph) -> str:
    return f'''# accessproof demo configuration (written by `accessproof demo`).
# The endpoints below are local emulators that exist only while the demo runs.
[store]
path = "evidence"

[policy]
deprovision_sla_hours = 24
login_grace_minutes = 0

[hr]
type = "csv"
path = "hr.csv"
date_format = "%m/%d/%Y"
timezone = "{HR_TZ}"
termination_effective = "end_of_day"
[hr.columns]
person_id = "Employee ID"
email = "Work Email"
name = "Full Name"
aliases = "Other Emails"
department = "Department"
title = "Job Title"
worker_type = "Worker Type"
hired_on = "Hire Date"
terminated_on = "Termination Date"

[service_accounts]
path = "service-accounts.toml"

[[sources]]
name = "aws-prod"
type = "aws_iam"
region = "us-east-1"
endpoint_url = "{moto_url}"
cloudtrail_endpoint_url = "{cloudtrail_url}"
max_attempts = 3
privileged_groups = ["admins"]

[[sources]]
name = "workspace"
type = "google_workspace"
customer = "my_customer"
delegated_admin = "{GOOGLE_ADMIN}"
service_account_file = "file:google-service-account.json"
api_endpoint = "{google.url}/"
token_uri = "{google.token_uri}"
max_attempts = 3

[[sources]]
name = "entra"
type = "entra_id"
tenant_id = "{ENTRA_TENANT}"
client_id = "{ENTRA_CLIENT}"
client_secret = "env:ACCESSPROOF_DEMO_ENTRA_SECRET"
authority_host = "{graph.authority_host}"
graph_url = "{graph.graph_url}"
ca_bundle = "{graph.ca_path}"
max_attempts = 3

[[sources]]
name = "jira"
type = "jira"
url = "{jira_url}"
email = "{JIRA_EMAIL}"
api_token = "env:ACCESSPROOF_DEMO_JIRA_TOKEN"
jql = "project = ACCESS"
[sources.fields]
subject_email = "customfield_10050"
target_system = "customfield_10051"
request_type = "customfield_10010"
[sources.kinds]
"Access Request" = "access_request"
"Offboarding" = "offboarding"
"Role Change" = "role_change"
'''


class _Emulated:
    """Applies the organisation's changes to moto (IAM state) and the CloudTrail emulator."""

    def __init__(self, moto_url: str, cloudtrail, google, graph):
        self.iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1",
                                aws_access_key_id="demo", aws_secret_access_key="demo")
        self.cloudtrail = cloudtrail
        self.google, self.graph = google, graph
        self.email_of: dict[str, str] = {}      # IAM user name → the person's address
        from moto.iam.models import iam_backends
        self._backend = iam_backends[ACCOUNT_ID]["global"]
        self.iam.create_group(GroupName="admins")

    def _event(self, name, at, user, **kwargs):
        from accessproof_fakes.cloudtrail import make_event
        self.cloudtrail.add(make_event(name, at, user, account_id=ACCOUNT_ID,
                                       actor=f"arn:aws:iam::{ACCOUNT_ID}:user/it-admin", **kwargs))

    def apply(self, change: Change) -> None:
        self._apply_aws(change)
        if change.tags.get("account-type") == "service" or change.kind == "grant":
            return                     # service users and AWS groups exist in AWS only
        self._apply_directories(change)

    def _apply_directories(self, change: Change) -> None:
        """The same person's Google Workspace and Entra ID accounts follow the IAM changes."""
        email, at = self.email_of.get(change.user, change.user), change.at
        upn = email
        if change.kind == "create":
            self.google.add_user(email, created=at, last_login=None)
            self.google.add_activity("admin", "CREATE_USER", at, email)
            self.graph.add_user(upn, mail=email, created=at)
            self.graph.add_audit("Add user", at, upn)
        elif change.kind in ("disable", "delete"):
            if self.google.user(email) is None:
                return
            if change.kind == "delete":
                self.google.delete_user(email)
                self.graph.remove_user(upn)
            else:
                self.google.user(email)["suspended"] = True
                self.graph.set_enabled(upn, False)
            if change.events:
                self.google.add_activity("admin", "DELETE_USER" if change.kind == "delete"
                                         else "SUSPEND_USER", at, email)
                self.graph.add_audit("Delete user" if change.kind == "delete"
                                     else "Disable account", at, upn)
        elif change.kind == "enable":
            self.google.user(email)["suspended"] = False
            self.google.add_activity("admin", "UNSUSPEND_USER", at, email)
            self.graph.set_enabled(upn, True)
            self.graph.add_audit("Enable account", at, upn)
        elif change.kind == "login" and self.google.user(email) is not None:
            self.google.user(email)["lastLoginTime"] = at.astimezone(UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.000Z")
            self.google.add_activity("login", "login_success", at, email)
            self.graph.add_sign_in(upn, at)

    def _apply_aws(self, change: Change) -> None:
        user, at = change.user, change.at
        if change.kind == "create":
            self.email_of[user] = change.tags.get("email", user)
            tags = [{"Key": k, "Value": v} for k, v in change.tags.items()]
            self.iam.create_user(UserName=user, Tags=tags)
            self._backend.users[user].create_date = at.replace(tzinfo=None)
            if change.tags.get("account-type") != "service":
                self.iam.create_login_profile(UserName=user, Password="Demo-Password-1!")
            key = self.iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
            if change.events:
                self._event("CreateUser", at, user)
                if change.tags.get("account-type") != "service":
                    self._event("CreateLoginProfile", at + dt.timedelta(seconds=5), user)
                self._event("CreateAccessKey", at + dt.timedelta(seconds=9), user,
                            response_elements={"accessKey": {"accessKeyId": key,
                                                             "status": "Active"}})
        elif change.kind in ("disable", "delete"):
            keys = self.iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
            try:
                self.iam.delete_login_profile(UserName=user)
                if change.events:
                    self._event("DeleteLoginProfile", at, user)
            except self.iam.exceptions.NoSuchEntityException:
                pass
            for n, key in enumerate(keys, start=1):
                if change.kind == "delete":
                    self.iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
                else:
                    self.iam.update_access_key(UserName=user, AccessKeyId=key["AccessKeyId"],
                                               Status="Inactive")
                if change.events:
                    self._event("DeleteAccessKey" if change.kind == "delete" else
                                "UpdateAccessKey", at + dt.timedelta(seconds=n), user,
                                request_parameters={"accessKeyId": key["AccessKeyId"],
                                                    **({} if change.kind == "delete" else
                                                       {"status": "Inactive"})})
            if change.kind == "delete":
                self.iam.delete_user(UserName=user)
                if change.events:
                    self._event("DeleteUser", at + dt.timedelta(seconds=30), user)
        elif change.kind == "enable":
            self.iam.create_login_profile(UserName=user, Password="Demo-Password-1!")
            for key in self.iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
                self.iam.update_access_key(UserName=user, AccessKeyId=key["AccessKeyId"],
                                           Status="Active")
            self._event("CreateLoginProfile", at, user)
        elif change.kind == "grant":
            self.iam.add_user_to_group(GroupName="admins", UserName=user)
            self._event("AddUserToGroup", at, user, request_parameters={"groupName": "admins"})
        elif change.kind == "login":
            self._backend.users[user].password_last_used = at.replace(tzinfo=None)
            self._event("ConsoleLogin", at, user)


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise ConfigError(f"{out_dir} exists and is not a demo directory; choose another --out")
    if (out_dir / MARKER).exists():
        shutil.rmtree(out_dir)   # a fresh organisation each run, so the pack is reproducible
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by accessproof demo\n")


def run_demo(out_dir: Path, *, echo: Callable[[str], None] = print,
             today: dt.date | None = None, cadence_days: int = 1) -> tuple[Path, int]:
    """Build the organisation, collect every ``cadence_days`` simulated days (daily, like the
    service), pack the quarter."""
    from accessproof_fakes.aws import start_moto
    from accessproof_fakes.cloudtrail import CloudTrailEmulator
    from accessproof_fakes.google import GoogleEmulator
    from accessproof_fakes.graph import GraphEmulator
    from accessproof_fakes.jira import JiraEmulator
    from reports.pack import write_pack

    out_dir = Path(out_dir).resolve()
    _prepare_out_dir(out_dir)
    period = previous_quarter(today or utc_now().date())
    org = Organisation(period)
    echo(f"demo: {len(org.employments)} employments, period {period.label}, "
         f"emulators on 127.0.0.1")

    saved_env = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                 "AWS_SESSION_TOKEN", "AWS_PROFILE",
                                                 "ACCESSPROOF_DEMO_JIRA_TOKEN",
                                                 "ACCESSPROOF_DEMO_ENTRA_SECRET")}
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo",
                      ACCESSPROOF_DEMO_JIRA_TOKEN=JIRA_TOKEN,
                      ACCESSPROOF_DEMO_ENTRA_SECRET=ENTRA_SECRET)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    moto, moto_url = start_moto()
    cloudtrail = CloudTrailEmulator().start()
    jira = JiraEmulator(JIRA_EMAIL, JIRA_TOKEN).start()
    for key, kind, subject, target, created, approvals, resolved, summary in org.tickets:
        jira.add_request(key, kind, subject, target, created, summary, approvals, resolved)
    google = GoogleEmulator(admin=GOOGLE_ADMIN).start()
    google.write_key(out_dir / "google-service-account.json")
    # no Entra ID P1 licence: users and directory audits only, the source is degraded
    graph = GraphEmulator(ENTRA_TENANT, ENTRA_CLIENT, ENTRA_SECRET, premium=False).start()
    for guest in org.guests:
        graph.add_guest(guest, created=period.start.to_pydatetime() - dt.timedelta(days=90))
    try:
        (out_dir / "accessproof.toml").write_text(_config_text(moto_url, cloudtrail.url,
                                                               jira.url, google, graph))
        (out_dir / "service-accounts.toml").write_text(org.allowlist_toml())
        config = load_config(out_dir / "accessproof.toml")
        world = _Emulated(moto_url, cloudtrail, google, graph)
        pending = list(org.changes)
        first = period.start - pd.Timedelta(days=7)
        last = period.end + pd.Timedelta(days=1)
        days = [first + pd.Timedelta(days=d)
                for d in range(0, (last - first).days + 1, cadence_days)]
        if days[-1] != last:
            days.append(last)             # the snapshot after the period end
        for n, day in enumerate(days):
            now = (day + pd.Timedelta(hours=COLLECT_HOUR)).to_pydatetime()
            while pending and pending[0].at <= now:
                world.apply(pending.pop(0))
            if (day - period.start).days in OUTAGE_DAYS:
                continue          # the collector was down: a gap the pack must show
            google.now = now              # the emulator's 180-day horizon follows the clock
            pd.DataFrame(org.hr_rows(now)).to_csv(out_dir / "hr.csv", index=False)
            outcomes = collect(config, now=now)
            failed = [o for o in outcomes if o.status == "failed"]
            if failed:
                raise RuntimeError(f"demo collection failed: {failed[0].error}")
            if n % 15 == 0 or n == len(days) - 1:
                echo(f"demo: collected {day:%Y-%m-%d} ({n + 1}/{len(days)})")
        echo("demo: rendering the pack")
        evidence = build_evidence(config, period)
        path = write_pack(evidence, config.store_path, options=config.pack)
        for control in evidence.controls:
            echo(f"  {control.id:<30} {control.status:<14} population "
                 f"{control.population_size:>4}  exceptions {len(control.exceptions)}")
        return path, evidence.exit_code()
    finally:
        graph.stop()
        google.stop()
        jira.stop()
        cloudtrail.stop()
        moto.stop()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
