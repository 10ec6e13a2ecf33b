"""AWS IAM: users from the credential report and GetAccountAuthorizationDetails, IAM and console
sign-in events from CloudTrail LookupEvents (DESIGN §3, §9).

Why these calls: the credential report and GetAccountAuthorizationDetails return every user at
once, so the number of requests grows with pages, not with users, and the policy needs only the
permissions listed in ``AwsIam.permissions``. IAM and sign-in events are global-service events that
CloudTrail keeps only in us-east-1 (for the aws partition), for 90 days.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator

import boto3
import botocore.session
import pandas as pd
from botocore.config import Config
from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError,
                                 NoCredentialsError, NoRegionError, PartialCredentialsError)

from collector.config import SourceConfig
from collector.errors import SourceError
from collector.integration import CollectContext, CollectResult, Integration, Permission
from collector.paging import TokenPaginator
from collector.schema import SCHEMAS, conform

RETENTION_DAYS = 90
SENTINELS = {"", "n/a", "no_information", "not_supported"}
ROOT_ROW = "<root_account>"
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
REPORT_COLUMNS = ("user", "arn", "user_creation_time", "password_enabled", "password_last_used",
                  "access_key_1_active", "access_key_1_last_used_date", "access_key_2_active",
                  "access_key_2_last_used_date")
SIGN_IN_COLUMNS = ("password_last_used", "access_key_1_last_used_date",
                   "access_key_2_last_used_date")

# CloudTrail event name → canonical action (UpdateAccessKey depends on the new status).
EVENT_ACTIONS = {
    "CreateUser": "created",
    "DeleteUser": "deleted",
    "CreateLoginProfile": "enabled",
    "CreateAccessKey": "enabled",
    "DeleteLoginProfile": "disabled",
    "DeleteAccessKey": "disabled",
    "AddUserToGroup": "role_changed",
    "RemoveUserFromGroup": "role_changed",
    "AttachUserPolicy": "role_changed",
    "DetachUserPolicy": "role_changed",
    "PutUserPolicy": "role_changed",
    "DeleteUserPolicy": "role_changed",
    "ConsoleLogin": "login",
}
UPDATE_ACCESS_KEY = {"active": "enabled", "inactive": "disabled"}
# CloudTrail writes this instead of a user name that does not exist (failed sign-ins).
HIDDEN_USER = "HIDDEN_DUE_TO_SECURITY_REASONS"

# API call → the IAM permission it needs, for error messages.
PERMISSION_OF = {
    "GetCallerIdentity": "sts:GetCallerIdentity",  # needs no grant; cannot be denied
    "AssumeRole": "sts:AssumeRole",
    "GenerateCredentialReport": "iam:GenerateCredentialReport",
    "GetCredentialReport": "iam:GetCredentialReport",
    "GetAccountAuthorizationDetails": "iam:GetAccountAuthorizationDetails",
    "LookupEvents": "cloudtrail:LookupEvents",
}
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
          "UnauthorizedAccess", "AuthorizationError", "OperationNotPermittedException"}
BAD_CREDENTIALS = {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                   "InvalidSignatureException", "ExpiredToken", "ExpiredTokenException",
                   "InvalidAccessKeyId", "AuthFailure", "MissingAuthenticationToken",
                   "MissingAuthenticationTokenException", "IncompleteSignature",
                   "IncompleteSignatureException", "RequestExpired"}
THROTTLED = {"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
             "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
             "SlowDown"}
# The credential report is not readable yet (or any more): generate and wait again.
REPORT_PENDING = {"ReportNotPresent", "ReportInProgress", "ReportExpired", "LimitExceeded",
                  "CredentialReportNotPresentException", "CredentialReportNotReadyException",
                  "CredentialReportExpiredException", "LimitExceededException"}


@dataclass(frozen=True)
class Settings:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    cloudtrail_endpoint_url: str | None = None
    assume_role_arn: str | None = None
    email_tag: str = "email"
    kind_tag: str = "account-type"
    privileged_policies: tuple[str, ...] = ("AdministratorAccess", "IAMFullAccess",
                                            "PowerUserAccess")
    privileged_groups: tuple[str, ...] = ()
    backfill_days: int = RETENTION_DAYS
    max_attempts: int = 8
    report_timeout_seconds: float = 120.0

    @classmethod
    def from_source(cls, source: SourceConfig) -> "Settings":
        """Read and type-check the options; raises ``ConfigError`` naming the key."""
        values: dict[str, Any] = {}
        for key in ("region", "endpoint_url", "cloudtrail_endpoint_url", "assume_role_arn",
                    "email_tag", "kind_tag"):
            if key in source.options:
                value = source.options[key]
                if not isinstance(value, str) or not value.strip():
                    raise source.error(key, "must be a non-empty string")
                values[key] = value.strip()
        for key in ("endpoint_url", "cloudtrail_endpoint_url"):
            if key in values and not values[key].startswith(("http://", "https://")):
                raise source.error(key, "must be an http:// or https:// URL")
        if "assume_role_arn" in values and not values["assume_role_arn"].startswith("arn:"):
            raise source.error("assume_role_arn", "must be a role ARN (arn:aws:iam::…:role/…)")
        for key in ("privileged_policies", "privileged_groups"):
            if key in source.options:
                value = source.options[key]
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise source.error(key, "must be a list of names")
                values[key] = tuple(value)
        for key, low, high in (("backfill_days", 1, RETENTION_DAYS), ("max_attempts", 1, 20)):
            if key in source.options:
                value = source.options[key]
                if isinstance(value, bool) or not isinstance(value, int) \
                        or not low <= value <= high:
                    raise source.error(key, f"must be a whole number from {low} to {high}")
                values[key] = value
        if "report_timeout_seconds" in source.options:
            value = source.options["report_timeout_seconds"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise source.error("report_timeout_seconds", "must be a number of seconds > 0")
            values["report_timeout_seconds"] = float(value)
        return cls(**values)


class AwsIam(Integration):
    type = "aws_iam"
    title = "AWS IAM"
    tables = ("accounts", "events")
    log_retention_days = RETENTION_DAYS
    options = {
        "region": "AWS region for STS and the IAM client (default us-east-1)",
        "endpoint_url": "endpoint override for IAM and STS (tests, compatible endpoints)",
        "cloudtrail_endpoint_url": "endpoint override for CloudTrail (defaults to endpoint_url)",
        "assume_role_arn": "role to assume with sts:AssumeRole before collecting (optional)",
        "email_tag": "IAM user tag whose value is the user's email (default 'email')",
        "kind_tag": "IAM user tag whose value human/service classifies it (default 'account-type')",
        "privileged_policies": "policy names or ARNs that make a user privileged (default "
                               "AdministratorAccess, IAMFullAccess, PowerUserAccess)",
        "privileged_groups": "IAM group names whose members are privileged (default none)",
        "backfill_days": "days of CloudTrail events the first collection pulls (1-90, default 90)",
        "max_attempts": "HTTP attempts per API call, retries on throttling included (default 8)",
        "report_timeout_seconds": "how long to wait for the credential report (default 120)",
    }
    permissions = (
        Permission("aws-iam-policy", "iam:GenerateCredentialReport",
                   "start the credential report: console password and access keys of every user"),
        Permission("aws-iam-policy", "iam:GetCredentialReport",
                   "read the credential report (enabled state and last use of every user)"),
        Permission("aws-iam-policy", "iam:GetAccountAuthorizationDetails",
                   "every user with id, tags, groups and policies, and every group's policies, "
                   "in a few paged calls"),
        Permission("aws-iam-policy", "cloudtrail:LookupEvents",
                   "IAM user changes and console sign-ins (us-east-1, last 90 days)"),
        Permission("aws-iam-policy", "sts:AssumeRole",
                   "only when assume_role_arn is set: assume that role to read the account"),
    )

    @classmethod
    def validate(cls, source: SourceConfig) -> None:
        super().validate(source)
        Settings.from_source(source)

    def collect(self, ctx: CollectContext) -> CollectResult:
        settings = Settings.from_source(ctx.config)
        aws = AwsClient(ctx, settings)
        identity = aws.caller_identity()
        account_id = identity["Account"]
        report_rows, root, generated_at = aws.credential_report()
        users, groups = aws.authorization_details()
        accounts, notes = build_accounts(report_rows, users, groups, source=ctx.name,
                                         instance=account_id, settings=settings)
        since, until = event_window(ctx, settings)
        raw_events = list(aws.lookup_events(since, until)) if since < until else []
        emails = {login.casefold(): email for login, email
                  in zip(accounts["login"], accounts["email"]) if not pd.isna(email)}
        events = build_events(raw_events, source=ctx.name, instance=account_id, emails=emails)
        ctx.log.info("aws_iam %s: %d users, %d events (%s .. %s)", account_id, len(accounts),
                     len(events), since.isoformat(), until.isoformat())

        limitations = []
        if notes["not_in_report"]:
            limitations.append(
                f"{len(notes['not_in_report'])} user(s) are newer than the credential report "
                f"generated at {generated_at}; their enabled state and last sign-in are unknown: "
                + ", ".join(notes["not_in_report"][:20]))
        return CollectResult(
            tables={"accounts": accounts, "events": events},
            principal=identity["Arn"],
            instances=[account_id],
            limitations=limitations,
            extra={
                "account_id": account_id,
                "assumed_role": settings.assume_role_arn,
                "credential_report_generated_at": generated_at,
                # The root user is not a user account (it is not in `accounts`), but its use is
                # evidence an auditor asks about; its row stays in the raw credential report.
                "root_account": root,
                "users_only_in_credential_report": notes["only_in_report"],
                "cloudtrail_region": aws.cloudtrail_region,
                "events_window": {"start": _iso(since), "end": _iso(until)},
            })

    def check(self, ctx: CollectContext) -> list[str]:
        """`accessproof check`: authenticate (sts:GetCallerIdentity, after sts:AssumeRole when
        assume_role_arn is set), then one cheap call per permission the collection needs. Each
        denial names the missing IAM permission; nothing is recorded but in ``ctx.raw``."""
        settings = Settings.from_source(ctx.config)
        try:
            aws = AwsClient(ctx, settings)
            identity = aws.call(aws.client("sts"), "GetCallerIdentity")
        except SourceError as exc:    # no usable identity: nothing else can be checked
            return [str(exc)]
        principal = identity.get("Arn") or "the collecting principal"
        ctx.log.info("aws_iam %s: authenticated as %s (account %s)", ctx.name, principal,
                     identity.get("Account"))
        iam, cloudtrail = aws.client("iam"), aws.client("cloudtrail")
        since = ctx.now - dt.timedelta(hours=1)
        probes = (
            (iam, "GenerateCredentialReport", {}),
            (iam, "GetCredentialReport", {}),
            (iam, "GetAccountAuthorizationDetails", {"Filter": ["User"], "MaxItems": 1}),
            (cloudtrail, "LookupEvents", {"StartTime": since, "EndTime": ctx.now,
                                          "MaxResults": 1}),
        )
        problems = []
        for client, operation, params in probes:
            permission = PERMISSION_OF[operation]
            try:
                aws.call(client, operation, **params)
            except SourceError as exc:
                code = _error_code(exc)
                if code in REPORT_PENDING:    # allowed: the report is just not ready yet
                    continue
                if code in DENIED:
                    problems.append(f"missing permission {permission}: {operation} was denied "
                                    f"({code}) for {principal}")
                else:
                    problems.append(f"{permission}: {exc}")
            else:
                ctx.log.debug("aws_iam %s: %s allowed", ctx.name, permission)
        return problems


_shared_loader = None


def _botocore_session() -> botocore.session.Session:
    """A fresh botocore session that reuses one data loader: service models are parsed once per
    process rather than once per collection (a scheduler collects for months)."""
    global _shared_loader
    session = botocore.session.Session()
    if _shared_loader is None:
        _shared_loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _shared_loader)
    return session


class AwsClient:
    """The AWS calls of one collection: clients, retries, error mapping and raw recording."""

    def __init__(self, ctx: CollectContext, settings: Settings):
        self.ctx, self.settings = ctx, settings
        # Retries live here and only here: botocore's standard mode retries throttling and 5xx
        # with exponential backoff; our code never retries on its own.
        self.config = Config(retries={"mode": "standard",
                                      "total_max_attempts": settings.max_attempts},
                             connect_timeout=10, read_timeout=60,
                             user_agent_extra="accessproof")
        self.cloudtrail_region = _cloudtrail_region(settings.region)
        self._clients: dict[str, Any] = {}
        self.session = self._session()

    # --- plumbing -----------------------------------------------------------------------------
    def _session(self) -> boto3.session.Session:
        # The default chain: environment, AWS_PROFILE / shared config, instance or task role.
        base = boto3.session.Session(region_name=self.settings.region,
                                     botocore_session=_botocore_session())
        if not self.settings.assume_role_arn:
            return base
        sts = base.client("sts", endpoint_url=self.settings.endpoint_url, config=self.config)
        response = self.call(sts, "AssumeRole", RoleArn=self.settings.assume_role_arn,
                             RoleSessionName=f"accessproof-{self.ctx.name}"[:64])
        # Never record the credentials themselves, only who we became.
        self.record("sts.AssumeRole", sts, {"AssumedRoleUser": response.get("AssumedRoleUser")},
                    {"RoleArn": self.settings.assume_role_arn})
        creds = response["Credentials"]
        return boto3.session.Session(aws_access_key_id=creds["AccessKeyId"],
                                     aws_secret_access_key=creds["SecretAccessKey"],
                                     aws_session_token=creds["SessionToken"],
                                     region_name=self.settings.region,
                                     botocore_session=_botocore_session())

    def client(self, service: str):
        if service not in self._clients:
            if service == "cloudtrail":
                self._clients[service] = self.session.client(
                    "cloudtrail", region_name=self.cloudtrail_region, config=self.config,
                    endpoint_url=self.settings.cloudtrail_endpoint_url
                    or self.settings.endpoint_url)
            else:
                self._clients[service] = self.session.client(
                    service, endpoint_url=self.settings.endpoint_url, config=self.config)
        return self._clients[service]

    def call(self, client, operation: str, **kwargs) -> dict[str, Any]:
        """One API call (botocore retries inside); failures become ``SourceError``."""
        method = getattr(client, _snake(operation))
        try:
            return method(**kwargs)
        except ClientError as exc:
            raise self._client_error(operation, exc) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise SourceError(self.ctx.name, f"no usable AWS credentials for {operation} ({exc}); "
                                             "set AWS_PROFILE, the AWS_* environment variables or "
                                             "an instance/task role") from exc
        except NoRegionError as exc:
            raise SourceError(self.ctx.name, f"{operation}: no region ({exc})") from exc
        except EndpointConnectionError as exc:
            where = exc.kwargs.get("endpoint_url")
            raise SourceError(self.ctx.name, f"{operation}: cannot reach {where} after "
                                             f"{self.settings.max_attempts} attempt(s)") from exc
        except BotoCoreError as exc:
            raise SourceError(self.ctx.name, f"{operation} failed: {exc}") from exc

    def _client_error(self, operation: str, exc: ClientError) -> SourceError:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
        permission = PERMISSION_OF.get(operation, operation)
        if code in DENIED:
            text = (f"{operation} was denied ({code}: {message}); the collecting principal needs "
                    f"the IAM permission {permission}")
        elif code in BAD_CREDENTIALS:
            text = (f"AWS rejected the credentials when calling {operation} ({code}: {message}); "
                    "check AWS_PROFILE / the AWS_* environment variables / the instance role"
                    + (" and assume_role_arn" if self.settings.assume_role_arn else ""))
        elif code in THROTTLED:
            text = (f"{operation} was still throttled after {attempts} attempts ({code}); raise "
                    "max_attempts or collect when the account is quieter")
        else:
            text = f"{operation} failed after {attempts} attempt(s) ({code}: {message})"
        return SourceError(self.ctx.name, text)

    def record(self, request: str, client, body: dict[str, Any], parameters: dict | None = None,
               records: int = 0) -> None:
        self.ctx.raw.page(request, _jsonable(_strip_metadata(body)),
                          endpoint=client.meta.endpoint_url, parameters=_jsonable(parameters or {}),
                          records=records)

    # --- calls --------------------------------------------------------------------------------
    def caller_identity(self) -> dict[str, Any]:
        sts = self.client("sts")
        response = self.call(sts, "GetCallerIdentity")
        self.record("sts.GetCallerIdentity", sts, response, records=1)
        return response

    def credential_report(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str | None]:
        """Generate the credential report until COMPLETE (bounded wait), then read it."""
        iam = self.client("iam")
        deadline = time.monotonic() + self.settings.report_timeout_seconds
        delay, state = 0.2, None
        while True:
            try:
                response = self.call(iam, "GenerateCredentialReport")
                self.record("iam.GenerateCredentialReport", iam, response)
                state = response.get("State")
                if state == "COMPLETE":
                    report = self.call(iam, "GetCredentialReport")
                    break
            except SourceError as exc:
                # Not ready, expired or regenerated between our two calls: wait and try again.
                state = _error_code(exc)
                if state not in REPORT_PENDING:
                    raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceError(self.ctx.name, f"the credential report was not ready after "
                                                 f"{self.settings.report_timeout_seconds:g} s "
                                                 f"(last state: {state}); raise "
                                                 "report_timeout_seconds")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)
        text = report["Content"].decode("utf-8-sig") if isinstance(report["Content"], bytes) \
            else str(report["Content"])
        rows, root = parse_credential_report(text, source=self.ctx.name)
        generated = _iso(report.get("GeneratedTime"))
        self.record("iam.GetCredentialReport", iam,
                    {"GeneratedTime": generated, "ReportFormat": report.get("ReportFormat"),
                     "Content": text}, records=len(rows) + (root is not None))
        return rows, root, generated

    def authorization_details(self) -> tuple[list[dict], list[dict]]:
        iam = self.client("iam")
        params = {"Filter": ["User", "Group"], "MaxItems": 1000}
        users: list[dict] = []
        groups: list[dict] = []

        def fetch(marker):
            page = self.call(iam, "GetAccountAuthorizationDetails",
                             **params, **({"Marker": marker} if marker else {}))
            self.record("iam.GetAccountAuthorizationDetails", iam, page, params,
                        records=len(page.get("UserDetailList", []))
                        + len(page.get("GroupDetailList", [])))
            return page

        for page in TokenPaginator(fetch, lambda p: p.get("IsTruncated") and p.get("Marker"),
                                   source=self.ctx.name,
                                   request="iam:GetAccountAuthorizationDetails"):
            users.extend(page.get("UserDetailList", []))
            groups.extend(page.get("GroupDetailList", []))
        return users, groups

    def lookup_events(self, since: dt.datetime, until: dt.datetime) -> Iterator[dict[str, Any]]:
        """IAM API events, then console sign-ins: one attribute per call (an API limit)."""
        cloudtrail = self.client("cloudtrail")
        for label, key, value in (("iam", "EventSource", "iam.amazonaws.com"),
                                  ("ConsoleLogin", "EventName", "ConsoleLogin")):
            params = {"LookupAttributes": [{"AttributeKey": key, "AttributeValue": value}],
                      "StartTime": since, "EndTime": until, "MaxResults": 50}
            request = f"cloudtrail.LookupEvents-{label}"

            def fetch(token, params=params, request=request):
                page = self.call(cloudtrail, "LookupEvents",
                                 **params, **({"NextToken": token} if token else {}))
                self.record(request, cloudtrail, page,
                            {**params, "region": self.cloudtrail_region},
                            records=len(page.get("Events", [])))
                return page

            for page in TokenPaginator(fetch, lambda p: p.get("NextToken"), source=self.ctx.name,
                                       request="cloudtrail:LookupEvents"):
                yield from page.get("Events", [])


# --- pure mapping (no I/O) --------------------------------------------------------------------

def parse_credential_report(text: str, *, source: str) -> tuple[list[dict], dict | None]:
    """Rows of the credential report by header name, sentinels as None; the root row apart."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REPORT_COLUMNS if c not in header]
    if missing:
        raise SourceError(source, "the credential report lacks column(s) " + ", ".join(missing))
    reader.fieldnames = header
    rows, root = [], None
    for raw in reader:
        row = {k: _value(v) for k, v in raw.items() if k is not None}
        if row.get("user") == ROOT_ROW:
            root = row
        elif row.get("user"):
            rows.append(row)
    return rows, _root_summary(root)


def _root_summary(row: dict | None) -> dict | None:
    if row is None:
        return None
    last = [ts for ts in (_ts(row.get(c)) for c in SIGN_IN_COLUMNS) if ts is not None]
    return {"arn": row.get("arn"), "mfa_active": _bool(row.get("mfa_active")),
            "password_last_used": _iso(_ts(row.get("password_last_used"))),
            "access_key_active": bool(_bool(row.get("access_key_1_active"))
                                      or _bool(row.get("access_key_2_active"))),
            "last_used": _iso(max(last)) if last else None}


def build_accounts(report_rows: list[dict], users: list[dict], groups: list[dict], *,
                   source: str, instance: str, settings: Settings
                   ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """One row per IAM user that exists now (GetAccountAuthorizationDetails), with state and
    last use from the credential report. Also returns the names found in only one of them."""
    report = {row["user"]: row for row in report_rows}
    privileged = {p.casefold() for p in settings.privileged_policies}
    privileged_groups = {g.casefold() for g in settings.privileged_groups}
    group_policies = {g.get("GroupName"): _policy_keys(g.get("AttachedManagedPolicies"),
                                                       g.get("GroupPolicyList"))
                      for g in groups}
    rows, not_in_report = [], []
    for user in users:
        name = user["UserName"]
        tags = {str(t.get("Key", "")).casefold(): str(t.get("Value", "")).strip()
                for t in user.get("Tags") or []}
        member_of = list(user.get("GroupList") or [])
        keys = _policy_keys(user.get("AttachedManagedPolicies"), user.get("UserPolicyList"))
        for group in member_of:
            keys |= group_policies.get(group, set())
        row = report.get(name)
        if row is None:
            not_in_report.append(name)
            enabled = last_login = never = None
            created = _ts(user.get("CreateDate"))
        else:
            enabled = any(_bool(row.get(c)) for c in ("password_enabled", "access_key_1_active",
                                                      "access_key_2_active"))
            used = [ts for ts in (_ts(row.get(c)) for c in SIGN_IN_COLUMNS) if ts is not None]
            last_login = max(used) if used else None
            # every sign-in column a sentinel = "never signed in", a value (not unknown)
            never = not used
            created = _ts(row.get("user_creation_time")) or _ts(user.get("CreateDate"))
        kind = tags.get(settings.kind_tag.casefold(), "").lower()
        rows.append({
            "source": source, "instance": instance,
            "account_id": user.get("UserId") or user.get("Arn") or name,
            "login": name,
            "email": name if EMAIL.match(name) else (tags.get(settings.email_tag.casefold())
                                                     or None),
            "display_name": name,
            "kind": kind if kind in ("human", "service") else "unknown",
            "enabled": enabled, "created_at": created, "disabled_at": None,
            "last_login_at": last_login, "never_logged_in": never,
            "privileged": bool(keys & privileged) or any(g.casefold() in privileged_groups
                                                         for g in member_of),
            "groups": member_of,
        })
    current = {u["UserName"] for u in users}
    notes = {"not_in_report": sorted(not_in_report),
             # deleted after the (up to 4 h old) report was generated
             "only_in_report": sorted(set(report) - current)}
    frame = pd.DataFrame(rows, columns=list(SCHEMAS["accounts"]))
    return conform(frame, "accounts", source=source), notes


def map_event(event: dict[str, Any], *, source: str, instance: str) -> dict[str, Any] | None:
    """A LookupEvents event → an ``events`` row, or None for events we do not track."""
    name = event.get("EventName")
    detail = _json(event.get("CloudTrailEvent"))
    params = detail.get("requestParameters") or {}
    if name == "UpdateAccessKey":
        action = UPDATE_ACCESS_KEY.get(str(params.get("status", "")).lower())
    else:
        action = EVENT_ACTIONS.get(name)
    if action is None:
        return None
    identity = detail.get("userIdentity") or {}
    if name == "ConsoleLogin":
        result = str((detail.get("responseElements") or {}).get("ConsoleLogin", "")).lower()
        outcome = "failure" if result == "failure" or detail.get("errorCode") else "success"
    else:
        outcome = "failure" if detail.get("errorCode") else "success"
    return {
        "source": source, "instance": instance,
        "at": _ts(event.get("EventTime") or detail.get("eventTime")),
        "action": action,
        "actor": identity.get("arn") or event.get("Username"),
        "target_account": _target(name, event, params, identity),
        "target_email": None,
        "outcome": outcome,
        "event_id": event.get("EventId") or detail.get("eventID"),
    }


def build_events(raw_events: list[dict], *, source: str, instance: str,
                 emails: dict[str, str]) -> pd.DataFrame:
    rows, seen = [], set()
    for event in raw_events:
        row = map_event(event, source=source, instance=instance)
        if row is None or row["event_id"] in seen:
            continue
        seen.add(row["event_id"])
        target = row["target_account"]
        if target:
            row["target_email"] = target if EMAIL.match(target) else emails.get(target.casefold())
        rows.append(row)
    rows.sort(key=lambda r: (r["at"], r["event_id"]))
    frame = pd.DataFrame(rows, columns=list(SCHEMAS["events"]))
    return conform(frame, "events", source=source)


def event_window(ctx: CollectContext, settings: Settings) -> tuple[dt.datetime, dt.datetime]:
    """The LookupEvents window: what the pipeline asks for, cut to what CloudTrail keeps."""
    floor = ctx.now - dt.timedelta(days=RETENTION_DAYS)
    if ctx.first_collection:
        floor = max(floor, ctx.now - dt.timedelta(days=settings.backfill_days))
    return max(ctx.events_since, floor), ctx.events_until


def _target(name: str, event: dict, params: dict, identity: dict) -> str | None:
    """The IAM user an event is about."""
    if name != "ConsoleLogin":
        if params.get("userName"):
            return str(params["userName"])
        for resource in event.get("Resources") or []:
            if resource.get("ResourceType") == "AWS::IAM::User" and resource.get("ResourceName"):
                return resource["ResourceName"]
    # A sign-in is about the signing-in identity; access-key calls without userName act on the
    # caller itself (IAM's documented default).
    if identity.get("type") == "Root":
        return ROOT_ROW
    user = identity.get("userName") or (event.get("Username") if name == "ConsoleLogin" else None)
    return None if user in (None, "", HIDDEN_USER) else str(user)


def _policy_keys(managed: list | None, inline: list | None) -> set[str]:
    keys = set()
    for policy in managed or []:
        keys.add(str(policy.get("PolicyName", "")).casefold())
        keys.add(str(policy.get("PolicyArn", "")).casefold())
    for policy in inline or []:
        keys.add(str(policy.get("PolicyName", "")).casefold())
    keys.discard("")
    return keys


def _value(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return None if text.lower() in SENTINELS else text


def _bool(text: str | None) -> bool | None:
    return None if text is None else text.lower() == "true"


def _ts(value: Any) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _iso(value: Any) -> str | None:
    ts = _ts(value)
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _jsonable(value: Any) -> Any:
    """Datetimes as ISO UTC so raw pages do not depend on the host's time zone."""
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _strip_metadata(body: dict[str, Any]) -> dict[str, Any]:
    # Keep the request id (useful to AWS support), drop HTTP headers and retry counts.
    out = {k: v for k, v in body.items() if k != "ResponseMetadata"}
    request_id = body.get("ResponseMetadata", {}).get("RequestId")
    if request_id:
        out["RequestId"] = request_id
    return out


def _error_code(exc: SourceError) -> str | None:
    cause = exc.__cause__
    return cause.response.get("Error", {}).get("Code") if isinstance(cause, ClientError) else None


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def _cloudtrail_region(region: str) -> str:
    # Global-service (IAM, sign-in) events land in the partition's home region.
    if region.startswith("us-gov-"):
        return "us-gov-west-1"
    if region.startswith("cn-"):
        return "cn-north-1"
    return "us-east-1"
