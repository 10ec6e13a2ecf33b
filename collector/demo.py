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


@dataclass(order=True)
class Change:
    """Something that happens to the organisation at a moment (applied before a collection)."""

    at: dt.datetime
    kind: str = field(compare=False)          # create | disable | delete | enable | login
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
        self.changes.sort()

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
            rows.append({
                "Employee ID": emp.person_id, "Full Name": emp.name, "Work Email": emp.email,
                "Other Emails": ";".join(emp.aliases), "Department": emp.department,
                "Job Title": emp.title, "Worker Type": emp.worker_type.title(),
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


def _config_text(moto_url: str, cloudtrail_url: str) -> str:
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
'''


class _Emulated:
    """Applies the organisation's changes to moto (IAM state) and the CloudTrail emulator."""

    def __init__(self, moto_url: str, cloudtrail):
        self.iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1",
                                aws_access_key_id="demo", aws_secret_access_key="demo")
        self.cloudtrail = cloudtrail
        from moto.iam.models import iam_backends
        self._backend = iam_backends[ACCOUNT_ID]["global"]

    def _event(self, name, at, user, **kwargs):
        from accessproof_fakes.cloudtrail import make_event
        self.cloudtrail.add(make_event(name, at, user, account_id=ACCOUNT_ID,
                                       actor=f"arn:aws:iam::{ACCOUNT_ID}:user/it-admin", **kwargs))

    def apply(self, change: Change) -> None:
        user, at = change.user, change.at
        if change.kind == "create":
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
             today: dt.date | None = None) -> tuple[Path, int]:
    """Build the organisation, collect once per simulated day, pack the quarter."""
    from accessproof_fakes.aws import start_moto
    from accessproof_fakes.cloudtrail import CloudTrailEmulator
    from reports.pack import write_pack

    out_dir = Path(out_dir).resolve()
    _prepare_out_dir(out_dir)
    period = previous_quarter(today or utc_now().date())
    org = Organisation(period)
    echo(f"demo: {len(org.employments)} employments, period {period.label}, "
         f"emulators on 127.0.0.1")

    saved_env = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                 "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo")
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    moto, moto_url = start_moto()
    cloudtrail = CloudTrailEmulator().start()
    try:
        (out_dir / "accessproof.toml").write_text(_config_text(moto_url, cloudtrail.url))
        (out_dir / "service-accounts.toml").write_text(org.allowlist_toml())
        config = load_config(out_dir / "accessproof.toml")
        world = _Emulated(moto_url, cloudtrail)
        pending = list(org.changes)
        first = period.start - pd.Timedelta(days=7)
        last = period.end + pd.Timedelta(days=1)
        days = [first + pd.Timedelta(days=d) for d in range((last - first).days + 1)]
        for n, day in enumerate(days):
            now = (day + pd.Timedelta(hours=COLLECT_HOUR)).to_pydatetime()
            while pending and pending[0].at <= now:
                world.apply(pending.pop(0))
            if (day - period.start).days in OUTAGE_DAYS:
                continue          # the collector was down: a gap the pack must show
            pd.DataFrame(org.hr_rows(now)).to_csv(out_dir / "hr.csv", index=False)
            outcomes = collect(config, now=now)
            failed = [o for o in outcomes if o.status == "failed"]
            if failed:
                raise RuntimeError(f"demo collection failed: {failed[0].error}")
            if n % 15 == 0 or n == len(days) - 1:
                echo(f"demo: collected {day:%Y-%m-%d} ({n + 1}/{len(days)})")
        echo("demo: rendering the pack")
        evidence = build_evidence(config, period)
        path = write_pack(evidence, config.store_path)
        for control in evidence.controls:
            echo(f"  {control.id:<30} {control.status:<14} population "
                 f"{control.population_size:>4}  exceptions {len(control.exceptions)}")
        return path, evidence.exit_code()
    finally:
        cloudtrail.stop()
        moto.stop()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
