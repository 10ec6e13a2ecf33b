"""aws_iam against real boto3 over real HTTP: moto's server for IAM/STS, our CloudTrail emulator."""

from __future__ import annotations

import collections
import datetime as dt
import gzip
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pandas as pd
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from accessproof_fakes.aws import enforce_moto_auth, reset_moto, start_moto
from accessproof_fakes.cloudtrail import CloudTrailEmulator, make_event, make_many
from collector.config import SourceConfig
from collector.errors import ConfigError, SourceError
from collector.integration import CollectContext
from collector.store import RawRecorder
from integrations.aws_iam import (EVENT_ACTIONS, AwsIam, Settings, build_accounts,
                                  parse_credential_report)

DATA = Path(__file__).parent / "data"
NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=dt.timezone.utc)
ACCOUNT = "123456789012"
ADMIN_POLICY = f"arn:aws:iam::{ACCOUNT}:policy/AdministratorAccess"
ALLOW_ALL = json.dumps({"Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_url():
    # Without MOTO_IAM_LOAD_MANAGED_POLICIES: loading AWS's ~1,000 managed policies costs ~2 s on
    # every reset. Tests create customer-managed policies with the same names instead.
    server, url = start_moto()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def cloudtrail():
    with CloudTrailEmulator() as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, moto_url, cloudtrail, tmp_path):
    # Only the credentials given here, never the host's profiles or instance metadata.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    reset_moto(moto_url)
    cloudtrail.reset()


@pytest.fixture
def iam(moto_url):
    return boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1")


@pytest.fixture
def api_calls(monkeypatch):
    """Count HTTP requests per service.operation, observed on every boto3 client created."""
    calls: collections.Counter = collections.Counter()
    original = boto3.session.Session.client

    def client(self, *args, **kwargs):
        made = original(self, *args, **kwargs)

        def count(event_name, **_):
            _, service, operation = event_name.split(".", 2)
            calls[f"{service}.{operation}"] += 1

        made.meta.events.register("before-send", count)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    return calls


def run(moto_url, cloudtrail, tmp_path, *, since=NOW - dt.timedelta(days=30), first=False,
        name="aws-prod", **options):
    """One collection; returns (result, raw recorder)."""
    options = {"endpoint_url": moto_url, "cloudtrail_endpoint_url": cloudtrail.url,
               "max_attempts": 3, **options}
    source = SourceConfig(name=name, type="aws_iam", options=options, section=f"sources '{name}'",
                          file="config.toml")
    AwsIam.validate(source)
    raw = RawRecorder(tmp_path / "raw")
    ctx = CollectContext(name=name, config=source, now=NOW, events_since=since, events_until=NOW,
                         raw=raw, log=logging.getLogger("test.aws_iam"), first_collection=first)
    try:
        return AwsIam().collect(ctx), raw
    finally:
        raw.close()


def raw_pages(raw: RawRecorder, request: str) -> list[dict]:
    with gzip.open(raw.raw_dir / f"{request}.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def by_login(result) -> dict[str, dict]:
    return {row["login"]: row for row in result.tables["accounts"].to_dict("records")}


def seed_org(iam, moto_url):
    """A small organisation; returns the access key used by ci-bot (so it has a last use)."""
    for name in ("AdministratorAccess", "PowerUserAccess"):   # named like AWS's managed ones
        iam.create_policy(PolicyName=name, PolicyDocument=ALLOW_ALL)
    iam.create_group(GroupName="admins")
    iam.attach_group_policy(GroupName="admins", PolicyArn=ADMIN_POLICY)
    iam.create_group(GroupName="devs")
    iam.create_group(GroupName="breakglass")

    # human, console password, admin through a group, email is the user name, never signed in
    iam.create_user(UserName="alice@corp.example",
                    Tags=[{"Key": "account-type", "Value": "human"}])
    iam.create_login_profile(UserName="alice@corp.example", Password="Sup3r-secret-pass!")
    iam.add_user_to_group(UserName="alice@corp.example", GroupName="admins")

    # email from the tag; first key deactivated, second active → enabled
    iam.create_user(UserName="bob", Tags=[{"Key": "email", "Value": "bob@corp.example"}])
    old = iam.create_access_key(UserName="bob")["AccessKey"]
    iam.create_access_key(UserName="bob")
    iam.update_access_key(UserName="bob", AccessKeyId=old["AccessKeyId"], Status="Inactive")
    iam.add_user_to_group(UserName="bob", GroupName="devs")

    # only key deactivated, no password → disabled
    iam.create_user(UserName="carol", Tags=[{"Key": "email", "Value": "carol@corp.example"}])
    key = iam.create_access_key(UserName="carol")["AccessKey"]
    iam.update_access_key(UserName="carol", AccessKeyId=key["AccessKeyId"], Status="Inactive")

    # service account with a directly attached privileged policy; its key has been used
    iam.create_user(UserName="ci-bot", Tags=[{"Key": "account-type", "Value": "service"}])
    iam.attach_user_policy(UserName="ci-bot",
                           PolicyArn=f"arn:aws:iam::{ACCOUNT}:policy/PowerUserAccess")
    bot = iam.create_access_key(UserName="ci-bot")["AccessKey"]
    boto3.client("sts", endpoint_url=moto_url, region_name="us-east-1",
                 aws_access_key_id=bot["AccessKeyId"],
                 aws_secret_access_key=bot["SecretAccessKey"]).get_caller_identity()

    # member of a group that is privileged only by configuration; inline user policy
    iam.create_user(UserName="dave")
    iam.create_login_profile(UserName="dave", Password="Sup3r-secret-pass!")
    iam.add_user_to_group(UserName="dave", GroupName="breakglass")
    iam.put_user_policy(UserName="dave", PolicyName="inline-admin", PolicyDocument=ALLOW_ALL)
    return bot


# --- integration contract -----------------------------------------------------------------------

def test_declares_least_privilege_permissions_and_options():
    names = [p.name for p in AwsIam.permissions]
    assert sorted(names) == sorted([
        "iam:GenerateCredentialReport", "iam:GetCredentialReport",
        "iam:GetAccountAuthorizationDetails", "cloudtrail:LookupEvents", "sts:AssumeRole"])
    assert {p.system for p in AwsIam.permissions} == {"aws-iam-policy"}
    assert "assume_role_arn" in next(p.why for p in AwsIam.permissions
                                     if p.name == "sts:AssumeRole")
    assert AwsIam.tables == ("accounts", "events") and AwsIam.log_retention_days == 90
    assert set(AwsIam.options) == {
        "region", "endpoint_url", "cloudtrail_endpoint_url", "assume_role_arn", "email_tag",
        "kind_tag", "privileged_policies", "privileged_groups", "backfill_days", "max_attempts",
        "report_timeout_seconds"}


@pytest.mark.parametrize("options, key", [
    ({"regoin": "us-east-1"}, "regoin"),
    ({"backfill_days": 120}, "backfill_days"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"privileged_groups": "admins"}, "privileged_groups"),
    ({"endpoint_url": "127.0.0.1:5000"}, "endpoint_url"),
])
def test_bad_options_are_config_errors(options, key):
    source = SourceConfig(name="aws", type="aws_iam", options=options, section="sources 'aws'",
                          file="c.toml")
    with pytest.raises(ConfigError) as err:
        AwsIam.validate(source)
    assert err.value.key == key and "c.toml" in str(err.value)


# --- accounts -----------------------------------------------------------------------------------

def test_accounts_mapping(iam, moto_url, cloudtrail, tmp_path):
    seed_org(iam, moto_url)
    result, raw = run(moto_url, cloudtrail, tmp_path, privileged_groups=["breakglass"])
    accounts = result.tables["accounts"]
    assert result.principal == f"arn:aws:sts::{ACCOUNT}:user/moto"
    assert result.instances == [ACCOUNT]
    assert sorted(accounts["login"]) == ["alice@corp.example", "bob", "carol", "ci-bot", "dave"]
    assert set(accounts["source"]) == {"aws-prod"} and set(accounts["instance"]) == {ACCOUNT}
    assert isinstance(accounts["created_at"].dtype, pd.DatetimeTZDtype)

    rows = by_login(result)
    details = iam.get_account_authorization_details(Filter=["User"])["UserDetailList"]
    assert {r["login"]: r["account_id"] for r in rows.values()} == \
        {u["UserName"]: u["UserId"] for u in details}

    alice = rows["alice@corp.example"]
    assert alice["email"] == "alice@corp.example" and alice["kind"] == "human"
    assert alice["enabled"] and alice["privileged"] and alice["groups"] == ["admins"]
    assert alice["never_logged_in"] and pd.isna(alice["last_login_at"])

    bob = rows["bob"]
    assert bob["email"] == "bob@corp.example" and bob["kind"] == "unknown"
    assert bob["enabled"] and not bob["privileged"] and bob["groups"] == ["devs"]

    carol = rows["carol"]
    assert not carol["enabled"] and carol["email"] == "carol@corp.example"

    bot = rows["ci-bot"]
    assert bot["kind"] == "service" and bot["privileged"] and bot["enabled"]
    assert not bool(bot["never_logged_in"])    # bool(NA) would raise: unknown is not False
    assert abs(bot["last_login_at"] - pd.Timestamp.now(tz="UTC")) < pd.Timedelta(minutes=5)

    dave = rows["dave"]
    assert dave["privileged"] and pd.isna(dave["email"]) and dave["kind"] == "unknown"
    assert all(pd.isna(r["disabled_at"]) for r in rows.values())
    assert result.extra["root_account"] is None  # moto's report has no root row


def test_privileged_by_inline_policy_name_and_group_only_when_configured(
        iam, moto_url, cloudtrail, tmp_path):
    seed_org(iam, moto_url)
    default, _ = run(moto_url, cloudtrail, tmp_path / "a")
    assert not by_login(default)["dave"]["privileged"]   # breakglass has no policy
    inline, _ = run(moto_url, cloudtrail, tmp_path / "b", privileged_policies=["inline-admin"])
    rows = by_login(inline)
    assert rows["dave"]["privileged"]
    assert not rows["alice@corp.example"]["privileged"]  # the list replaces the defaults
    by_arn, _ = run(moto_url, cloudtrail, tmp_path / "c", privileged_policies=[ADMIN_POLICY])
    assert by_login(by_arn)["alice@corp.example"]["privileged"]


def test_custom_tags(iam, moto_url, cloudtrail, tmp_path):
    iam.create_user(UserName="eve", Tags=[{"Key": "Owner-Email", "Value": " eve@corp.example "},
                                          {"Key": "class", "Value": "Service"}])
    result, _ = run(moto_url, cloudtrail, tmp_path, email_tag="owner-email", kind_tag="class")
    eve = by_login(result)["eve"]
    assert eve["email"] == "eve@corp.example" and eve["kind"] == "service"


def test_real_format_credential_report_parsing():
    text = (DATA / "aws_credential_report.csv").read_text()
    rows, root = parse_credential_report(text, source="aws")
    assert [r["user"] for r in rows] == ["alice@corp.example", "bob", "svc-deploy",
                                         "old-contractor"]
    assert root["arn"] == "arn:aws:iam::123456789012:root" and root["mfa_active"] is True
    assert root["password_last_used"] == "2026-02-10T08:01:02Z"
    bob = rows[1]
    assert bob["password_last_used"] is None and bob["access_key_1_last_used_date"] is None
    assert bob["password_enabled"] == "true"

    # parsed by header name: the same report with its columns in another order reads the same
    lines = [line.split(",") for line in text.splitlines()]
    order = list(reversed(range(len(lines[0]))))
    shuffled = "\n".join(",".join(line[i] for i in order) for line in lines) + "\n"
    assert parse_credential_report(shuffled, source="aws") == (rows, root)

    with pytest.raises(SourceError, match="password_enabled"):
        parse_credential_report(text.replace("password_enabled", "pw"), source="aws")


def test_real_format_report_end_to_end(iam, moto_url, cloudtrail, tmp_path, monkeypatch):
    """AWS's report (root row, sentinels) served by moto in place of moto's own report."""
    from moto.iam.models import IAMBackend
    text = (DATA / "aws_credential_report.csv").read_text()
    monkeypatch.setattr(IAMBackend, "get_credential_report", lambda self: text)
    for name in ("alice@corp.example", "bob", "svc-deploy", "old-contractor", "newbie"):
        iam.create_user(UserName=name)
    result, raw = run(moto_url, cloudtrail, tmp_path)
    rows = by_login(result)
    assert set(rows) == {"alice@corp.example", "bob", "svc-deploy", "old-contractor", "newbie"}
    assert pd.isna(rows["newbie"]["enabled"])          # newer than the report: unknown
    assert len(result.limitations) == 1 and "newbie" in result.limitations[0]

    alice = rows["alice@corp.example"]
    assert alice["enabled"] and not bool(alice["never_logged_in"])
    assert alice["last_login_at"] == pd.Timestamp("2026-03-12T10:00:00Z")  # key after password
    assert alice["created_at"] == pd.Timestamp("2024-05-02T14:20:11Z")
    assert rows["bob"]["enabled"] and bool(rows["bob"]["never_logged_in"])
    assert rows["svc-deploy"]["enabled"] and bool(rows["svc-deploy"]["never_logged_in"])
    old = rows["old-contractor"]
    assert not old["enabled"] and old["last_login_at"] == pd.Timestamp("2025-11-01T06:30:00Z")
    assert not bool(old["never_logged_in"])

    assert result.extra["root_account"]["last_used"] == "2026-02-10T08:01:02Z"
    page = raw_pages(raw, "iam.GetCredentialReport")[0]["body"]
    assert "<root_account>" in page["Content"]
    assert raw.requests["iam.GetCredentialReport"]["records"] == 5


def test_users_missing_from_a_stale_report():
    """The report may be up to 4 h old: newer users have unknown state, deleted ones drop out."""
    report = [{"user": "kept", "password_enabled": "true", "password_last_used": None,
               "access_key_1_active": "false", "access_key_2_active": "false",
               "access_key_1_last_used_date": None, "access_key_2_last_used_date": None,
               "user_creation_time": "2025-01-01T00:00:00+00:00"},
              {"user": "deleted-since", "password_enabled": "true"}]
    users = [{"UserName": "kept", "UserId": "AIDAKEPT"},
             {"UserName": "new", "UserId": "AIDANEW", "CreateDate": NOW}]
    accounts, notes = build_accounts(report, users, [], source="aws", instance=ACCOUNT,
                                     settings=Settings())
    rows = {r["login"]: r for r in accounts.to_dict("records")}
    assert set(rows) == {"kept", "new"}
    assert rows["kept"]["enabled"] and bool(rows["kept"]["never_logged_in"])
    assert pd.isna(rows["new"]["enabled"]) and pd.isna(rows["new"]["never_logged_in"])
    assert rows["new"]["created_at"] == pd.Timestamp(NOW)
    assert notes == {"not_in_report": ["new"], "only_in_report": ["deleted-since"]}


def test_report_waits_until_ready(iam, moto_url, cloudtrail, tmp_path, monkeypatch, api_calls):
    from moto.iam.exceptions import ReportNotPresentException
    from moto.iam.models import IAMBackend
    original = IAMBackend.get_credential_report
    failures = iter([True])

    def flaky(self):  # expired/regenerated between GenerateCredentialReport and the read
        if next(failures, False):
            raise ReportNotPresentException("Credential report not present")
        return original(self)

    monkeypatch.setattr(IAMBackend, "get_credential_report", flaky)
    iam.create_user(UserName="bob")
    result, _ = run(moto_url, cloudtrail, tmp_path)
    assert list(result.tables["accounts"]["login"]) == ["bob"]
    assert api_calls["iam.GetCredentialReport"] == 2


def test_report_timeout(iam, moto_url, cloudtrail, tmp_path, monkeypatch):
    from moto.iam.models import IAMBackend
    monkeypatch.setattr(IAMBackend, "report_generated", lambda self: False)  # never COMPLETE
    started = time.monotonic()
    with pytest.raises(SourceError, match="credential report was not ready after 0.5 s"):
        run(moto_url, cloudtrail, tmp_path, report_timeout_seconds=0.5)
    assert time.monotonic() - started < 3


# --- events -------------------------------------------------------------------------------------

def test_events_mapping(iam, moto_url, cloudtrail, tmp_path):
    iam.create_user(UserName="bob", Tags=[{"Key": "email", "Value": "bob@corp.example"}])
    t = NOW - dt.timedelta(days=2)
    admin = f"arn:aws:iam::{ACCOUNT}:user/admin"
    cases = {  # event id → (event, expected action, target, outcome)
        "e01": (make_event("CreateUser", t, "gone"), "created", "gone", "success"),
        "e02": (make_event("DeleteUser", t, "gone"), "deleted", "gone", "success"),
        "e03": (make_event("CreateLoginProfile", t, "bob"), "enabled", "bob", "success"),
        "e04": (make_event("CreateAccessKey", t, "bob"), "enabled", "bob", "success"),
        "e05": (make_event("UpdateAccessKey", t, "bob",
                           request_parameters={"accessKeyId": "AKIA1", "status": "Active"}),
                "enabled", "bob", "success"),
        "e06": (make_event("UpdateAccessKey", t, "bob",
                           request_parameters={"accessKeyId": "AKIA1", "status": "Inactive"}),
                "disabled", "bob", "success"),
        "e07": (make_event("DeleteLoginProfile", t, "bob"), "disabled", "bob", "success"),
        "e08": (make_event("DeleteAccessKey", t, "bob",
                           request_parameters={"accessKeyId": "AKIA1"}),
                "disabled", "bob", "success"),
        "e09": (make_event("AddUserToGroup", t, "bob", request_parameters={"groupName": "g"}),
                "role_changed", "bob", "success"),
        "e10": (make_event("RemoveUserFromGroup", t, "bob",
                           request_parameters={"groupName": "g"}), "role_changed", "bob",
                "success"),
        "e11": (make_event("AttachUserPolicy", t, "bob",
                           request_parameters={"policyArn": ADMIN_POLICY}), "role_changed", "bob",
                "success"),
        "e12": (make_event("DetachUserPolicy", t, "bob",
                           request_parameters={"policyArn": ADMIN_POLICY}), "role_changed", "bob",
                "success"),
        "e13": (make_event("PutUserPolicy", t, "bob", request_parameters={"policyName": "p"}),
                "role_changed", "bob", "success"),
        "e14": (make_event("DeleteUserPolicy", t, "bob", request_parameters={"policyName": "p"}),
                "role_changed", "bob", "success"),
        "e15": (make_event("ConsoleLogin", t, "bob"), "login", "bob", "success"),
        "e16": (make_event("ConsoleLogin", t, "alice@corp.example",
                           response_elements={"ConsoleLogin": "Failure"}),
                "login", "alice@corp.example", "failure"),
        "e17": (make_event("CreateUser", t, "mallory", error_code="AccessDenied"),
                "created", "mallory", "failure"),
        # no userName: IAM acts on the caller itself
        "e18": (make_event("CreateAccessKey", t, None, actor=f"arn:aws:iam::{ACCOUNT}:user/bob"),
                "enabled", "bob", "success"),
    }
    for event_id, (event, *_) in cases.items():
        event.update(EventId=event_id)
    dropped = [make_event("ChangePassword", t, "bob", event_id="x1"),
               make_event("UpdateLoginProfile", t, "bob", event_id="x2"),
               make_event("UpdateAccessKey", t, "bob", event_id="x3"),  # no status
               make_event("CreateUser", NOW - dt.timedelta(days=40), "old", event_id="x4"),
               make_event("CreateUser", t, "elsewhere", region="eu-west-1", event_id="x5")]
    cloudtrail.add(*(case[0] for case in cases.values()), *dropped)

    result, _ = run(moto_url, cloudtrail, tmp_path, region="eu-west-1")
    events = result.tables["events"]
    assert sorted(events["event_id"]) == sorted(cases)
    assert set(EVENT_ACTIONS) - {"ConsoleLogin"} <= \
        {json.loads(c[0]["CloudTrailEvent"])["eventName"] for c in cases.values()}
    rows = {r["event_id"]: r for r in events.to_dict("records")}
    for event_id, (_, action, target, outcome) in cases.items():
        row = rows[event_id]
        assert (row["action"], row["target_account"], row["outcome"]) == \
            (action, target, outcome), event_id
        assert row["at"] == pd.Timestamp(t) and row["source"] == "aws-prod"
        assert row["instance"] == ACCOUNT
    assert rows["e03"]["actor"] == admin
    assert rows["e15"]["actor"] == f"arn:aws:iam::{ACCOUNT}:user/bob"
    assert rows["e03"]["target_email"] == "bob@corp.example"          # from the user's tag
    assert rows["e16"]["target_email"] == "alice@corp.example"        # email-shaped name
    assert pd.isna(rows["e01"]["target_email"])                       # deleted, no email known
    assert str(events["at"].dtype) == "datetime64[us, UTC]"

    # IAM and sign-in events live in us-east-1 whatever region the source is configured for
    lookups = cloudtrail.lookup_requests()
    assert {r["region"] for r in lookups} == {"us-east-1"}
    assert sorted(json.dumps(r["body"]["LookupAttributes"]) for r in lookups) == sorted([
        json.dumps([{"AttributeKey": "EventSource", "AttributeValue": "iam.amazonaws.com"}]),
        json.dumps([{"AttributeKey": "EventName", "AttributeValue": "ConsoleLogin"}])])
    assert all(r["body"]["MaxResults"] == 50 for r in lookups)


def test_event_window_and_backfill(moto_url, cloudtrail, tmp_path):
    since = NOW - dt.timedelta(days=200)
    result, _ = run(moto_url, cloudtrail, tmp_path / "a", since=since)
    starts = {r["body"]["StartTime"] for r in cloudtrail.lookup_requests()}
    assert starts == {(NOW - dt.timedelta(days=90)).timestamp()}     # what CloudTrail keeps
    assert {r["body"]["EndTime"] for r in cloudtrail.lookup_requests()} == {NOW.timestamp()}
    assert result.extra["events_window"]["end"] == "2026-03-20T12:00:00Z"

    cloudtrail.reset()
    run(moto_url, cloudtrail, tmp_path / "b", since=since, first=True, backfill_days=7)
    starts = {r["body"]["StartTime"] for r in cloudtrail.lookup_requests()}
    assert starts == {(NOW - dt.timedelta(days=7)).timestamp()}


def test_paging_and_raw_pages(moto_url, cloudtrail, tmp_path, iam):
    iam.create_user(UserName="bob")
    start = NOW - dt.timedelta(days=10)
    cloudtrail.add(*make_many(120, start, name="CreateUser"))
    cloudtrail.add(*make_many(120, start, name="ConsoleLogin", prefix="login"))
    result, raw = run(moto_url, cloudtrail, tmp_path)

    events = result.tables["events"]
    assert len(events) == 240 and events["event_id"].is_unique
    assert (events["action"] == "created").sum() == 120
    lookups = cloudtrail.lookup_requests()
    assert len(lookups) == 6
    assert sum("NextToken" in r["body"] for r in lookups) == 4

    for request in ("cloudtrail.LookupEvents-iam", "cloudtrail.LookupEvents-ConsoleLogin"):
        entry = raw.requests[request]
        pages = raw_pages(raw, request)
        assert entry["pages"] == 3 == len(pages) and entry["records"] == 120
        assert [len(p["body"]["Events"]) for p in pages] == [50, 50, 20]
        assert entry["endpoint"] == cloudtrail.url
        assert entry["parameters"]["StartTime"] == "2026-02-18T12:00:00Z"
    for request in ("sts.GetCallerIdentity", "iam.GenerateCredentialReport",
                    "iam.GetCredentialReport", "iam.GetAccountAuthorizationDetails"):
        assert raw.requests[request]["pages"] >= 1
        assert (raw.raw_dir / f"{request}.jsonl.gz").stat().st_size > 0
        assert len(raw_pages(raw, request)) == raw.requests[request]["pages"]
    details = raw_pages(raw, "iam.GetAccountAuthorizationDetails")[0]["body"]
    assert details["UserDetailList"][0]["UserName"] == "bob"


def test_transient_errors_are_retried(moto_url, cloudtrail, tmp_path):
    cloudtrail.add(make_event("CreateUser", NOW - dt.timedelta(days=1), "bob"))
    cloudtrail.throttle_next(1)
    cloudtrail.fail_next(1, status=500)
    result, raw = run(moto_url, cloudtrail, tmp_path, max_attempts=3)
    assert list(result.tables["events"]["target_account"]) == ["bob"]
    statuses = [r["status"] for r in cloudtrail.lookup_requests()]
    assert statuses == [400, 500, 200, 200]   # two attempts lost, then one call per attribute
    assert raw.requests["cloudtrail.LookupEvents-iam"]["pages"] == 1   # only answers recorded


def test_persistent_throttling_is_a_source_error(moto_url, cloudtrail, tmp_path):
    cloudtrail.throttle_next(10)
    with pytest.raises(SourceError) as err:
        run(moto_url, cloudtrail, tmp_path, max_attempts=2)
    message = str(err.value)
    assert "LookupEvents" in message and "throttled after 2 attempts" in message
    assert "aws-prod" in message
    assert len(cloudtrail.lookup_requests()) == 2


def test_cloudtrail_access_denied_names_the_permission(moto_url, cloudtrail, tmp_path):
    cloudtrail.deny_next()
    with pytest.raises(SourceError) as err:
        run(moto_url, cloudtrail, tmp_path)
    assert "LookupEvents was denied" in str(err.value)
    assert "cloudtrail:LookupEvents" in str(err.value)
    assert len(cloudtrail.lookup_requests()) == 1      # not retried


def test_repeated_next_token_is_a_source_error(moto_url, cloudtrail, tmp_path):
    cloudtrail.add(*make_many(120, NOW - dt.timedelta(days=1)))
    cloudtrail.repeat_next_token()
    with pytest.raises(SourceError, match="a second time"):
        run(moto_url, cloudtrail, tmp_path)
    assert len(cloudtrail.lookup_requests()) == 2      # page 2 repeats page 1's token → stop
    with gzip.open(tmp_path / "raw" / "cloudtrail.LookupEvents-iam.jsonl.gz", "rt") as fh:
        assert len(fh.readlines()) == 2                # the faulty page is kept as evidence


# --- requests and permissions -------------------------------------------------------------------

def test_requests_do_not_grow_with_users(iam, moto_url, cloudtrail, tmp_path, api_calls):
    for i in range(3):
        iam.create_user(UserName=f"user-{i}")
    api_calls.clear()
    small, _ = run(moto_url, cloudtrail, tmp_path / "small")
    few = dict(api_calls)

    reset_moto(moto_url)
    for i in range(30):
        iam.create_user(UserName=f"user-{i}")
        iam.create_login_profile(UserName=f"user-{i}", Password="Sup3r-secret-pass!")
        iam.create_access_key(UserName=f"user-{i}")
    api_calls.clear()
    large, _ = run(moto_url, cloudtrail, tmp_path / "large")
    assert len(small.tables["accounts"]) == 3 and len(large.tables["accounts"]) == 30
    assert dict(api_calls) == few
    assert set(few) == {"sts.GetCallerIdentity", "iam.GenerateCredentialReport",
                        "iam.GetCredentialReport", "iam.GetAccountAuthorizationDetails",
                        "cloudtrail.LookupEvents"}
    assert few["iam.GetAccountAuthorizationDetails"] == 1 and few["cloudtrail.LookupEvents"] == 2


@pytest.fixture
def moto_auth(moto_url):
    yield lambda: enforce_moto_auth(moto_url, True)
    enforce_moto_auth(moto_url, False)


def _principal_with(iam, actions: list[str], monkeypatch) -> None:
    iam.create_user(UserName="collector")
    iam.put_user_policy(UserName="collector", PolicyName="accessproof", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    key = iam.create_access_key(UserName="collector")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])


def test_declared_permissions_are_enough(iam, moto_url, cloudtrail, tmp_path, monkeypatch,
                                         moto_auth):
    seed_org(iam, moto_url)
    granted = [p.name for p in AwsIam.permissions if p.name.startswith("iam:")]
    _principal_with(iam, granted, monkeypatch)
    moto_auth()   # from here on moto evaluates the collector's policy on every IAM call
    result, _ = run(moto_url, cloudtrail, tmp_path)
    assert result.principal == f"arn:aws:iam::{ACCOUNT}:user/collector"
    assert len(result.tables["accounts"]) == 6


def test_iam_access_denied_names_call_and_permission(iam, moto_url, cloudtrail, tmp_path,
                                                     monkeypatch, moto_auth):
    _principal_with(iam, ["iam:GenerateCredentialReport", "iam:GetCredentialReport"],
                    monkeypatch)
    moto_auth()
    with pytest.raises(SourceError) as err:
        run(moto_url, cloudtrail, tmp_path)
    message = str(err.value)
    assert "GetAccountAuthorizationDetails was denied" in message
    assert "needs the IAM permission iam:GetAccountAuthorizationDetails" in message


def test_rejected_credentials(moto_url, cloudtrail, tmp_path, monkeypatch, moto_auth):
    moto_auth()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
    with pytest.raises(SourceError) as err:
        run(moto_url, cloudtrail, tmp_path)
    assert "rejected the credentials" in str(err.value)
    assert "GetCallerIdentity" in str(err.value) or "InvalidClientTokenId" in str(err.value)


def test_no_credentials(moto_url, cloudtrail, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SourceError, match="no usable AWS credentials"):
        run(moto_url, cloudtrail, tmp_path)


def test_assume_role(moto_url, cloudtrail, tmp_path):
    role = "arn:aws:iam::111122223333:role/accessproof-read"
    sts = boto3.client("sts", endpoint_url=moto_url, region_name="us-east-1")
    creds = sts.assume_role(RoleArn=role, RoleSessionName="seed")["Credentials"]
    other = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1",
                         aws_access_key_id=creds["AccessKeyId"],
                         aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"])
    other.create_user(UserName="in-other-account")

    result, raw = run(moto_url, cloudtrail, tmp_path, assume_role_arn=role)
    assert result.principal == \
        "arn:aws:sts::111122223333:assumed-role/accessproof-read/accessproof-aws-prod"
    assert result.instances == ["111122223333"]
    assert list(result.tables["accounts"]["login"]) == ["in-other-account"]
    assert raw.requests["sts.AssumeRole"]["pages"] == 1
    for path in raw.raw_dir.iterdir():       # the role's credentials are never recorded
        text = gzip.open(path, "rt").read()
        assert "SecretAccessKey" not in text and "SessionToken" not in text


# --- the emulator speaks the documented protocol ------------------------------------------------

@pytest.fixture
def lookup(cloudtrail):
    client = boto3.client("cloudtrail", endpoint_url=cloudtrail.url, region_name="us-east-1",
                          config=Config(parameter_validation=False,
                                        retries={"total_max_attempts": 1}))
    return client.lookup_events


def _code(call, **kwargs) -> str:
    with pytest.raises(ClientError) as err:
        call(**kwargs)
    return err.value.response["Error"]["Code"]


def test_emulator_validates_requests(cloudtrail, lookup):
    cloudtrail.add(*make_many(3, NOW - dt.timedelta(hours=1)))
    two = [{"AttributeKey": "EventName", "AttributeValue": "CreateUser"},
           {"AttributeKey": "Username", "AttributeValue": "admin"}]
    assert _code(lookup, LookupAttributes=two) == "InvalidLookupAttributesException"
    assert _code(lookup, LookupAttributes=[{"AttributeKey": "Colour", "AttributeValue": "x"}]) \
        == "InvalidLookupAttributesException"
    assert _code(lookup, MaxResults=51) == "InvalidMaxResultsException"
    assert _code(lookup, MaxResults=0) == "InvalidMaxResultsException"
    assert _code(lookup, StartTime=NOW, EndTime=NOW - dt.timedelta(seconds=1)) == \
        "InvalidTimeRangeException"
    assert _code(lookup, NextToken="made-up") == "InvalidNextTokenException"

    first = lookup(MaxResults=2)
    assert [e["EventTime"] for e in first["Events"]] == \
        sorted((e["EventTime"] for e in first["Events"]), reverse=True)   # newest first
    # a token only works with the parameters that produced it
    assert _code(lookup, MaxResults=1, NextToken=first["NextToken"]) == \
        "InvalidNextTokenException"
    last = lookup(MaxResults=2, NextToken=first["NextToken"])
    assert len(last["Events"]) == 1 and "NextToken" not in last
    assert last["Events"][0]["EventTime"].tzinfo is not None

    by_user = lookup(LookupAttributes=[{"AttributeKey": "ResourceName",
                                        "AttributeValue": "user-0001"}])
    assert [e["Resources"][0]["ResourceName"] for e in by_user["Events"]] == ["user-0001"]


def test_emulator_requires_sigv4_and_json_11(cloudtrail):
    def post(headers):
        request = urllib.request.Request(cloudtrail.url, data=b"{}", method="POST",
                                         headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=5)
        return err.value.code, json.loads(err.value.read())["__type"]

    target = {"X-Amz-Target": "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101."
                              "LookupEvents",
              "Content-Type": "application/x-amz-json-1.1"}
    assert post(target) == (400, "MissingAuthenticationTokenException")
    assert post({**target, "Authorization": "Bearer x"}) == (400, "IncompleteSignatureException")
    assert len(cloudtrail.requests) == 2


def test_make_event_is_realistic():
    at = NOW - dt.timedelta(minutes=5)
    login = make_event("ConsoleLogin", at, "bob", response_elements={"ConsoleLogin": "Failure"})
    detail = json.loads(login["CloudTrailEvent"])
    assert login["EventSource"] == detail["eventSource"] == "signin.amazonaws.com"
    assert detail["userIdentity"]["userName"] == "bob" and login["Username"] == "bob"
    assert detail["responseElements"] == {"ConsoleLogin": "Failure"}
    assert detail["eventTime"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert detail["eventID"] == login["EventId"] and detail["awsRegion"] == "us-east-1"

    created = make_event("CreateUser", at, "carol", error_code="EntityAlreadyExists")
    detail = json.loads(created["CloudTrailEvent"])
    assert created["EventSource"] == "iam.amazonaws.com" and created["Username"] == "admin"
    assert detail["requestParameters"] == {"userName": "carol"}
    assert detail["errorCode"] == "EntityAlreadyExists"
    assert created["Resources"] == [{"ResourceType": "AWS::IAM::User", "ResourceName": "carol"}]
