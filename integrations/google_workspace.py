"""Google Workspace: users from the Directory API, admin and sign-in events from the Reports API
(DESIGN §3, §9).

Why these calls: Directory ``users.list`` returns up to 500 users a page with every field the
canonical ``accounts`` table needs (a ``fields`` selection keeps recovery addresses, phones and
the like out of the evidence store), so requests grow with pages, not users. Reports
``activities.list`` is asked once per event name (``eventName`` takes one name) and only for the
window the pipeline asks for, so the server does the filtering. Both APIs are read with the two
read-only scopes in ``GoogleWorkspace.permissions``; the Reports API keeps 180 days.

Credentials: a service-account key (``service_account_file = "file:..."``) with domain-wide
delegation to ``delegated_admin``, or, without a key, application-default credentials (workload
identity, ``GOOGLE_APPLICATION_CREDENTIALS``); with ADC and ``delegated_admin`` the delegation JWT
is signed through the IAM Credentials ``signBlob`` API (keyless), without ``delegated_admin`` the
service account must hold an admin role itself.

Retries live in one place: googleapiclient's ``execute(num_retries=max_attempts - 1)`` retries
429, 5xx and rate-limit 403s with exponential backoff; our sleep hook stretches a wait to the
server's ``Retry-After`` when it asks for longer.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import google.auth
import google_auth_httplib2
import httplib2
import pandas as pd
from google.auth import exceptions as auth_exceptions
from google.auth import iam
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import HttpRequest

from collector.config import Secret, SourceConfig
from collector.errors import ConfigError, SourceError
from collector.integration import CollectContext, CollectResult, Integration, Permission
from collector.paging import TokenPaginator
from collector.schema import SCHEMAS, conform

RETENTION_DAYS = 180
# The Reports API refuses a startTime older than 180 days; the server's clock runs on while a
# request is in flight, so the first collection asks for one day less.
RETENTION_MARGIN = dt.timedelta(days=1)
DIRECTORY_SCOPE = "https://www.googleapis.com/auth/admin.directory.user.readonly"
REPORTS_SCOPE = "https://www.googleapis.com/auth/admin.reports.audit.readonly"
SCOPES = (DIRECTORY_SCOPE, REPORTS_SCOPE)
DEFAULT_API_ENDPOINT = "https://admin.googleapis.com/"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
NEVER_LOGGED_IN = "1970-01-01T00:00:00"   # lastLoginTime of a user who never signed in
USERS_PAGE = 500                          # users.list maximum
ACTIVITIES_PAGE = 1000                    # activities.list maximum
MAX_RETRY_AFTER = 120.0                   # seconds; a longer Retry-After is capped
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# The users.list fields we keep: what `accounts` needs plus what an auditor asks about; never
# recovery addresses, phones or postal addresses.
USER_FIELDS = ("nextPageToken,users(id,primaryEmail,aliases,nonEditableAliases,name/fullName,"
               "suspended,suspensionReason,archived,isAdmin,isDelegatedAdmin,creationTime,"
               "lastLoginTime,customerId,orgUnitPath,isEnrolledIn2Sv,isEnforcedIn2Sv)")

# Reports event name → canonical action, per application. One request sequence per name.
ADMIN_EVENTS = {
    "CREATE_USER": "created",
    "SUSPEND_USER": "disabled",
    "UNSUSPEND_USER": "enabled",
    "DELETE_USER": "deleted",
    "ARCHIVE_USER": "disabled",
    "UNARCHIVE_USER": "enabled",
    # admin-role grants and revocations
    "GRANT_ADMIN_PRIVILEGE": "role_changed",
    "REVOKE_ADMIN_PRIVILEGE": "role_changed",
    "ASSIGN_ROLE": "role_changed",
    "UNASSIGN_ROLE": "role_changed",
}
LOGIN_EVENTS = {"login_success": "login", "login_failure": "login"}
EVENTS = {"admin": ADMIN_EVENTS, "login": LOGIN_EVENTS}
OUTCOMES = {"login_failure": "failure"}

# Per call: the scope it needs and what the acting admin must hold.
CALLS = {
    "Directory users.list": (
        DIRECTORY_SCOPE, "an admin role with the Admin API privilege Users › Read"),
    "Reports activities.list": (
        REPORTS_SCOPE, "an admin role with the Admin console privilege Reports"),
}


@dataclass(frozen=True)
class Settings:
    customer: str = "my_customer"
    domain: str | None = None
    delegated_admin: str | None = None
    service_account_file: Secret | None = None
    api_endpoint: str | None = None
    token_uri: str | None = None
    max_attempts: int = 6
    backfill_days: int = RETENTION_DAYS
    ca_bundle: str | None = None

    @classmethod
    def from_source(cls, source: SourceConfig) -> "Settings":
        """Read and type-check the options; raises ``ConfigError`` naming the key."""
        values: dict[str, Any] = {}
        for key in ("customer", "domain", "delegated_admin", "api_endpoint", "token_uri",
                    "ca_bundle"):
            if key in source.options:
                value = source.options[key]
                if not isinstance(value, str) or not value.strip():
                    raise source.error(key, "must be a non-empty string")
                values[key] = value.strip()
        for key in ("api_endpoint", "token_uri"):
            if key in values and not values[key].startswith(("http://", "https://")):
                raise source.error(key, "must be an http:// or https:// URL")
        if "ca_bundle" in values:
            path = Path(os.path.expanduser(values["ca_bundle"]))
            if not path.is_absolute():    # relative to the configuration file, like every path
                path = Path(source.file).resolve().parent / path
            values["ca_bundle"] = str(path)
        if "delegated_admin" in values and not EMAIL.match(values["delegated_admin"]):
            raise source.error("delegated_admin", "must be the email address of an admin user")
        if "domain" in values and ("@" in values["domain"] or "." not in values["domain"]):
            raise source.error("domain", "must be a domain name such as 'corp.example'")
        if "service_account_file" in source.options:
            secret = source.options["service_account_file"]
            if not isinstance(secret, Secret):
                raise source.error("service_account_file",
                                   "must be a reference 'file:PATH' to the key JSON (or "
                                   "'env:NAME' holding it)")
            values["service_account_file"] = secret
            if "delegated_admin" not in values:
                raise source.error("delegated_admin",
                                   "is required with service_account_file: the admin user the "
                                   "service account acts as (domain-wide delegation)")
        for key, low, high in (("max_attempts", 1, 20), ("backfill_days", 1, RETENTION_DAYS)):
            if key in source.options:
                value = source.options[key]
                if isinstance(value, bool) or not isinstance(value, int) \
                        or not low <= value <= high:
                    raise source.error(key, f"must be a whole number from {low} to {high}")
                values[key] = value
        return cls(**values)


class GoogleWorkspace(Integration):
    type = "google_workspace"
    title = "Google Workspace"
    tables = ("accounts", "events")
    log_retention_days = RETENTION_DAYS
    options = {
        "customer": "customer ID for users.list and the Reports API (default 'my_customer', the "
                    "delegated admin's own account)",
        "delegated_admin": "email of the admin user the service account acts as (domain-wide "
                           "delegation); required with service_account_file; with "
                           "application-default credentials optional (keyless delegation "
                           "through IAM signBlob)",
        "service_account_file": "'file:PATH' (or 'env:NAME') of the service-account key JSON; "
                                "leave out to use application-default credentials",
        "domain": "list only the users of this domain (users.list 'domain' instead of "
                  "'customer'); events are not filtered (optional)",
        "api_endpoint": "endpoint override for the Directory and Reports APIs (default "
                        "https://admin.googleapis.com/)",
        "token_uri": "OAuth token endpoint override (default: the key file's token_uri, "
                     "https://oauth2.googleapis.com/token)",
        "max_attempts": "HTTP attempts per API call, retries on 429/5xx included (1-20, "
                        "default 6)",
        "backfill_days": "days of audit events the first collection pulls (1-180, default 180)",
        "ca_bundle": "CA bundle file for HTTPS (default: REQUESTS_CA_BUNDLE / SSL_CERT_FILE, "
                     "else the bundled roots)",
    }
    permissions = (
        Permission("google-oauth-scope", DIRECTORY_SCOPE,
                   "Directory users.list: every user with primary email, aliases, name, "
                   "suspended/archived, admin flags, creation and last sign-in time. Granted to "
                   "the service account's client ID under domain-wide delegation; the delegated "
                   "admin needs at least a custom admin role with the Admin API privilege "
                   "Users › Read (super admin not required)"),
        Permission("google-oauth-scope", REPORTS_SCOPE,
                   "Reports activities.list for the admin application (user created, suspended, "
                   "deleted, archived, admin roles) and the login application (sign-ins), last "
                   "180 days. The delegated admin's role also needs the Admin console privilege "
                   "Reports"),
    )

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep):
        self._sleep = sleep       # waits between retries (tests record them instead)

    @classmethod
    def validate(cls, source: SourceConfig) -> None:
        super().validate(source)
        Settings.from_source(source)

    def collect(self, ctx: CollectContext) -> CollectResult:
        settings = Settings.from_source(ctx.config)
        since, until = event_window(ctx, settings)
        google = GoogleClient(ctx, settings, sleep=self._sleep)
        try:
            google.authenticate()
            users = list(google.list_users())
            activities = {(app, name): list(google.list_activities(app, name, since, until))
                          if since < until else []
                          for app, names in EVENTS.items() for name in names}
        finally:
            google.close()
        instance = customer_instance(users, activities, settings.customer)
        accounts = build_accounts(users, source=ctx.name, instance=instance)
        events = build_events(activities, source=ctx.name, instance=instance)
        ctx.log.info("google_workspace %s: %d users, %d events (%s .. %s)", instance,
                     len(accounts), len(events), since.isoformat(), until.isoformat())
        return CollectResult(
            tables={"accounts": accounts, "events": events},
            principal=google.principal,
            instances=[instance],
            extra={
                "customer": settings.customer,
                "customer_id": instance,
                "domain": settings.domain,
                "service_account": google.service_account,
                "delegated_admin": settings.delegated_admin,
                "credentials": google.credential_kind,
                "api_endpoint": google.api_endpoint,
                "token_uri": None if google.credential_kind == "application_default"
                else google.token_uri,
                "scopes": list(SCOPES),
                "events_window": {"start": _iso(since), "end": _iso(until)},
                "event_names": {app: sorted(names) for app, names in EVENTS.items()},
                "users_with_aliases": int(sum(bool(u.get("aliases") or
                                                   u.get("nonEditableAliases"))
                                              for u in users)),
            })

    def check(self, ctx: CollectContext) -> list[str]:
        """Get a token, then one users.list and one activities.list call with maxResults=1;
        every problem names the scope or admin privilege to fix. Records nothing."""
        settings = Settings.from_source(ctx.config)
        try:
            google = GoogleClient(ctx, settings, sleep=self._sleep)
        except SourceError as exc:      # no application-default credentials
            return [str(exc)]
        try:
            google.authenticate()
        except SourceError as exc:
            google.close()
            return [str(exc)]
        problems = []
        try:
            for probe in (google.probe_users, google.probe_activities):
                try:
                    probe()
                except SourceError as exc:
                    problems.append(str(exc))
        finally:
            google.close()
        return problems


# --- the API calls ------------------------------------------------------------------------------

class _RetryAfterHttp:
    """Wraps the authorised httplib2 object to remember a 429/503 answer's ``Retry-After``, so
    the retry sleep (googleapiclient's backoff) waits at least that long."""

    def __init__(self, http):
        self.http = http
        self.retry_after: float | None = None

    def request(self, uri, method="GET", body=None, headers=None, **kwargs):
        response, content = self.http.request(uri, method, body=body, headers=headers, **kwargs)
        self.retry_after = _retry_after(response) if response.status in (429, 503) else None
        return response, content

    def __getattr__(self, name):
        return getattr(self.http, name)


class GoogleClient:
    """Credentials, the two API clients, retries, error mapping and raw recording."""

    def __init__(self, ctx: CollectContext, settings: Settings, *,
                 sleep: Callable[[float], None] = time.sleep):
        self.ctx, self.settings, self._sleep = ctx, settings, sleep
        self.api_endpoint = _with_slash(settings.api_endpoint or DEFAULT_API_ENDPOINT)
        self.service_account: str | None = None
        self.client_id: str | None = None
        self.credential_kind = "service_account_key" if settings.service_account_file \
            else "application_default"
        self.token_uri = settings.token_uri or DEFAULT_TOKEN_URI
        if settings.ca_bundle and not Path(settings.ca_bundle).is_file():
            raise ConfigError(f"no such file: {settings.ca_bundle}", file=ctx.config.file,
                              section=ctx.config.section, key="ca_bundle")
        self._transport = httplib2.Http(timeout=60, ca_certs=_ca_bundle(settings))
        self.credentials = self._credentials()
        self.http = _RetryAfterHttp(google_auth_httplib2.AuthorizedHttp(
            self.credentials, http=self._transport))
        options = {"api_endpoint": self.api_endpoint}
        self.directory = build("admin", "directory_v1", http=self.http, static_discovery=True,
                               cache_discovery=False, client_options=options,
                               requestBuilder=self._request)
        self.reports = build("admin", "reports_v1", http=self.http, static_discovery=True,
                             cache_discovery=False, client_options=options,
                             requestBuilder=self._request)

    def close(self) -> None:
        """Close the kept-alive connections (a scheduler collects for months)."""
        self._transport.close()

    @property
    def principal(self) -> str:
        who = self.service_account or "application-default credentials"
        return f"{who} as {self.settings.delegated_admin}" if self.settings.delegated_admin \
            else who

    # --- credentials --------------------------------------------------------------------------
    def _credentials(self):
        settings = self.settings
        if settings.service_account_file is not None:
            info = self._key_info(settings.service_account_file)
            if settings.token_uri:
                info["token_uri"] = settings.token_uri
            self.token_uri = info.get("token_uri") or DEFAULT_TOKEN_URI
            info["token_uri"] = self.token_uri
            try:
                creds = service_account.Credentials.from_service_account_info(info,
                                                                              scopes=SCOPES)
            except (ValueError, KeyError) as exc:
                raise self._config_error(f"is not a usable service-account key ({exc})") \
                    from None
            self.service_account, self.client_id = info["client_email"], info.get("client_id")
            return creds.with_subject(settings.delegated_admin)
        return self._default_credentials()

    def _key_info(self, secret: Secret) -> dict[str, Any]:
        text = secret.reveal()   # ConfigError names the file when it cannot be read
        try:
            info = json.loads(text)
        except ValueError:
            raise self._config_error("is not JSON (expected a service-account key file)") \
                from None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise self._config_error("is not a service-account key (its \"type\" must be "
                                     "\"service_account\")")
        missing = [k for k in ("client_email", "private_key", "private_key_id") if not info.get(k)]
        if missing:
            raise self._config_error("lacks " + ", ".join(missing))
        return info

    def _config_error(self, message: str) -> ConfigError:
        reference = self.settings.service_account_file.reference
        return ConfigError(f"{reference} {message}", file=self.ctx.config.file,
                           section=self.ctx.config.section, key="service_account_file")

    def _default_credentials(self):
        settings = self.settings
        try:
            creds, _project = google.auth.default(scopes=list(SCOPES))
        except auth_exceptions.DefaultCredentialsError as exc:
            raise SourceError(self.ctx.name, "no service_account_file is configured and no "
                                             f"application-default credentials were found "
                                             f"({exc})") from None
        email = getattr(creds, "service_account_email", None)
        self.service_account = email if email and email != "default" else None
        if not settings.delegated_admin:
            self.credential_kind = "application_default"
            return creds
        if isinstance(creds, service_account.Credentials):
            # GOOGLE_APPLICATION_CREDENTIALS names a key file: delegate with it directly
            self.credential_kind = "application_default_key"
            if settings.token_uri:
                creds = creds.with_token_uri(settings.token_uri)
            self.token_uri = getattr(creds, "_token_uri", None) or self.token_uri
            return creds.with_subject(settings.delegated_admin)
        # Workload identity / metadata server: no private key here, so the delegation JWT is
        # signed by the IAM Credentials API (the account needs roles/iam.serviceAccountTokenCreator
        # on itself).
        self.credential_kind = "application_default_signblob"
        request = google_auth_httplib2.Request(self._transport)
        if not self.service_account:
            try:
                creds.refresh(request)
            except auth_exceptions.GoogleAuthError as exc:
                raise SourceError(self.ctx.name, f"application-default credentials could not "
                                                 f"get a token ({exc})") from None
            email = getattr(creds, "service_account_email", None)
            self.service_account = email if email and email != "default" else None
        if not self.service_account:
            raise SourceError(self.ctx.name, "delegated_admin is set but the application-default "
                                             "credentials are not a service account; configure "
                                             "service_account_file, or run as a service account")
        signer = iam.Signer(request, creds, self.service_account)
        return service_account.Credentials(signer, self.service_account, self.token_uri,
                                           scopes=SCOPES, subject=settings.delegated_admin)

    def authenticate(self) -> None:
        """Fetch an access token now, so that a refusal is reported as what it is."""
        request = google_auth_httplib2.Request(self._transport)
        try:
            if not self.credentials.valid:
                self.credentials.refresh(request)
        except auth_exceptions.RefreshError as exc:
            raise SourceError(self.ctx.name, self._refusal(exc)) from None
        except auth_exceptions.GoogleAuthError as exc:   # TransportError, MalformedError
            raise SourceError(self.ctx.name, f"could not obtain an OAuth token from "
                                             f"{_redact(self.token_uri)}: {exc}") from None
        if not self.service_account:   # metadata-server credentials learn it on refresh
            email = getattr(self.credentials, "service_account_email", None)
            self.service_account = email if email and email != "default" else None

    def _refusal(self, exc: auth_exceptions.RefreshError) -> str:
        error, description = _oauth_error(exc)
        who = f"service account {self.service_account or '(application default)'}"
        if self.settings.delegated_admin:
            who += f" acting as {self.settings.delegated_admin}"
        text = (f"the token endpoint {_redact(self.token_uri)} refused {who} "
                f"({error}: {description})")
        client = f"client ID {self.client_id}" if self.client_id else \
            "the service account's client ID"
        if error == "unauthorized_client":
            missing = self._missing_scopes()
            if missing and len(missing) < len(SCOPES):
                return (f"{text}; domain-wide delegation does not grant {', '.join(missing)}: "
                        f"in the Admin console (Security › Access and data control › API "
                        f"controls › Domain-wide delegation) add it to {client}")
            return (f"{text}; domain-wide delegation is not set up: in the Admin console "
                    f"(Security › Access and data control › API controls › Domain-wide "
                    f"delegation) authorise {client} for the scopes {', '.join(SCOPES)}")
        if "signature" in description.lower():
            return (f"{text}; the key in service_account_file is not (or no longer) a key of "
                    f"{self.service_account}: create a new key and update the file")
        if "email or user id" in description.lower():
            return (f"{text}; delegated_admin {self.settings.delegated_admin} is not a user "
                    f"of this Google Workspace account")
        if "audience" in description.lower():
            return f"{text}; check token_uri"
        return text

    def _missing_scopes(self) -> list[str]:
        """Ask for one scope at a time to name the one delegation lacks (the token endpoint
        refuses the whole request when any scope is missing)."""
        if not hasattr(self.credentials, "with_scopes"):
            return []
        request = google_auth_httplib2.Request(self._transport)
        missing = []
        for scope in SCOPES:
            try:
                self.credentials.with_scopes([scope]).refresh(request)
            except auth_exceptions.RefreshError as exc:
                if _oauth_error(exc)[0] != "unauthorized_client":
                    return []
                missing.append(scope)
            except auth_exceptions.GoogleAuthError:
                return []
        return missing

    # --- requests -----------------------------------------------------------------------------
    def _request(self, *args, **kwargs) -> HttpRequest:
        request = HttpRequest(*args, **kwargs)
        request._sleep = self._retry_sleep     # googleapiclient's documented test hook
        return request

    def _retry_sleep(self, seconds: float) -> None:
        wanted = self.http.retry_after
        self._sleep(max(seconds, min(wanted, MAX_RETRY_AFTER)) if wanted else seconds)

    def execute(self, request: HttpRequest, call: str) -> dict[str, Any]:
        """One API call (googleapiclient retries inside); failures become ``SourceError``."""
        where = f"{call} ({request.method} {_redact(request.uri)})"
        attempts = self.settings.max_attempts
        try:
            return request.execute(num_retries=attempts - 1)
        except HttpError as exc:
            raise SourceError(self.ctx.name, self._http_error(where, call, exc)) from None
        except auth_exceptions.RefreshError as exc:
            raise SourceError(self.ctx.name, f"{where}: {self._refusal(exc)}") from None
        except auth_exceptions.GoogleAuthError as exc:
            raise SourceError(self.ctx.name, f"{where}: could not obtain an OAuth token "
                                             f"({exc})") from None
        except (OSError, httplib2.HttpLib2Error) as exc:
            raise SourceError(self.ctx.name, f"{where}: cannot reach the server after "
                                             f"{attempts} attempt(s) ({type(exc).__name__}: "
                                             f"{exc})") from None

    def _http_error(self, where: str, call: str, exc: HttpError) -> str:
        status = exc.resp.status
        message, reasons = _google_error(exc)
        scope, role = CALLS[call]
        admin = self.settings.delegated_admin or self.service_account or "the caller"
        if status == 401:
            return (f"{where}: 401 unauthenticated — the access token was rejected ({message}); "
                    f"check the service account, its key and token_uri")
        if status == 403:
            if "ACCESS_TOKEN_SCOPE_INSUFFICIENT" in reasons or "insufficientPermissions" \
                    in reasons or "scope" in message.lower():
                return (f"{where}: 403 forbidden ({message}); the token lacks the scope "
                        f"{scope}: grant it to the service account's client ID under "
                        f"domain-wide delegation")
            return (f"{where}: 403 forbidden ({message}); {admin} needs {role} (scope "
                    f"{scope}); check the delegated admin's role in the Admin console")
        if status == 429 or status >= 500:
            return (f"{where}: HTTP {status} after {self.settings.max_attempts} attempt(s) "
                    f"({message}); raise max_attempts or collect when the API is quieter")
        return f"{where}: HTTP {status} ({message})"

    def _record(self, request_name: str, request: HttpRequest, page: dict[str, Any],
                parameters: dict[str, Any], records: int) -> None:
        self.ctx.raw.page(request_name, page, endpoint=_redact(request.uri),
                          parameters=parameters, records=records)

    # --- calls --------------------------------------------------------------------------------
    def _user_scope(self) -> dict[str, Any]:
        if self.settings.domain:
            return {"domain": self.settings.domain}
        return {"customer": self.settings.customer}

    def list_users(self) -> Iterator[dict[str, Any]]:
        params = {**self._user_scope(), "maxResults": USERS_PAGE, "projection": "basic",
                  "fields": USER_FIELDS}

        def fetch(token):
            request = self.directory.users().list(**params,
                                                  **({"pageToken": token} if token else {}))
            page = self.execute(request, "Directory users.list")
            self._record("directory.users.list", request, page, params,
                         len(page.get("users") or []))
            return page

        for page in TokenPaginator(fetch, lambda p: p.get("nextPageToken"),
                                   source=self.ctx.name, request="Directory users.list"):
            yield from page.get("users") or []

    def _reports_customer(self) -> dict[str, str]:
        customer = self.settings.customer
        return {} if customer == "my_customer" else {"customerId": customer}

    def list_activities(self, application: str, event_name: str, since: dt.datetime,
                        until: dt.datetime) -> Iterator[dict[str, Any]]:
        params = {"userKey": "all", "applicationName": application, "eventName": event_name,
                  "startTime": _rfc3339(since), "endTime": _rfc3339(until),
                  "maxResults": ACTIVITIES_PAGE, **self._reports_customer()}
        name = f"reports.activities.list-{application}-{event_name}"

        def fetch(token):
            request = self.reports.activities().list(**params,
                                                     **({"pageToken": token} if token else {}))
            page = self.execute(request, "Reports activities.list")
            self._record(name, request, page, params, len(page.get("items") or []))
            return page

        for page in TokenPaginator(fetch, lambda p: p.get("nextPageToken"),
                                   source=self.ctx.name,
                                   request=f"Reports activities.list ({application}, "
                                           f"{event_name})"):
            yield from page.get("items") or []

    def probe_users(self) -> None:
        self.execute(self.directory.users().list(**self._user_scope(), maxResults=1,
                                                 fields="users(id)"),
                     "Directory users.list")

    def probe_activities(self) -> None:
        start = self.ctx.now - dt.timedelta(days=1)
        self.execute(self.reports.activities().list(
            userKey="all", applicationName="admin", maxResults=1, startTime=_rfc3339(start),
            endTime=_rfc3339(self.ctx.now), **self._reports_customer()),
            "Reports activities.list")


# --- pure mapping (no I/O) --------------------------------------------------------------------

def customer_instance(users: list[dict], activities: dict, configured: str) -> str:
    """The customer ID: from the users, else from the activities, else as configured."""
    for user in users:
        if user.get("customerId"):
            return str(user["customerId"])
    for items in activities.values():
        for item in items:
            customer = (item.get("id") or {}).get("customerId")
            if customer:
                return str(customer)
    return configured


def build_accounts(users: list[dict[str, Any]], *, source: str, instance: str) -> pd.DataFrame:
    rows = []
    for user in users:
        email = user.get("primaryEmail")
        last = user.get("lastLoginTime")
        never = None if not last else str(last).startswith(NEVER_LOGGED_IN)
        rows.append({
            "source": source, "instance": instance,
            "account_id": str(user["id"]) if user.get("id") else email,
            "login": email, "email": email,
            "display_name": (user.get("name") or {}).get("fullName") or email,
            "kind": "human",
            "enabled": not (bool(user.get("suspended")) or bool(user.get("archived"))),
            "created_at": _ts(user.get("creationTime")),
            "disabled_at": None,
            "last_login_at": None if never or not last else _ts(last),
            "never_logged_in": never,
            "privileged": bool(user.get("isAdmin")) or bool(user.get("isDelegatedAdmin")),
            "groups": [],
            # Google links by primary email *and* aliases (DESIGN §9); kept for an `aliases`
            # column of `accounts` (conform drops it while the schema has none)
            "aliases": [*(user.get("aliases") or []), *(user.get("nonEditableAliases") or [])],
        })
    columns = list(SCHEMAS["accounts"])
    frame = pd.DataFrame(rows, columns=columns + ([] if "aliases" in columns else ["aliases"]))
    return conform(frame, "accounts", source=source)


def _parameters(event: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for param in event.get("parameters") or []:
        for key in ("value", "intValue", "boolValue", "multiValue"):
            if key in param:
                out[param.get("name")] = param[key]
                break
    return out


def map_event(activity: dict[str, Any], event: dict[str, Any], *, source: str,
              instance: str) -> dict[str, Any] | None:
    """One event of a Reports activity → an ``events`` row, or None when we do not track it."""
    ident = activity.get("id") or {}
    application = ident.get("applicationName")
    name = event.get("name")
    action = EVENTS.get(application, {}).get(name)
    if action is None:
        return None
    actor = activity.get("actor") or {}
    actor_name = actor.get("email") or (f"profile:{actor['profileId']}"
                                        if actor.get("profileId") else actor.get("callerType"))
    params = _parameters(event)
    if application == "login":
        target = actor.get("email")
    else:
        target = params.get("USER_EMAIL")
    target = str(target).strip() if target else None
    return {
        "source": source, "instance": instance,
        "at": _ts(ident.get("time")),
        "action": action,
        "actor": actor_name,
        "target_account": target,
        "target_email": target if target and EMAIL.match(target) else None,
        "outcome": OUTCOMES.get(name, "success"),
        # (time, uniqueQualifier, application) identify an activity; name and target the event
        "event_id": "|".join([str(application), str(ident.get("time")),
                              str(ident.get("uniqueQualifier")), str(name), target or ""]),
    }


def build_events(activities: dict[tuple[str, str], list[dict[str, Any]]], *, source: str,
                 instance: str) -> pd.DataFrame:
    """Rows from each (application, event name) request: only that name's events are taken from
    its activities, so an activity returned by two requests is not counted twice."""
    rows, seen = [], set()
    for (_application, name), items in activities.items():
        for activity in items:
            for event in activity.get("events") or []:
                if event.get("name") != name:
                    continue
                row = map_event(activity, event, source=source, instance=instance)
                if row is None or row["event_id"] in seen:
                    continue
                seen.add(row["event_id"])
                rows.append(row)
    rows.sort(key=lambda r: (r["at"], r["event_id"]))
    frame = pd.DataFrame(rows, columns=list(SCHEMAS["events"]))
    return conform(frame, "events", source=source)


def event_window(ctx: CollectContext, settings: Settings) -> tuple[dt.datetime, dt.datetime]:
    """The Reports window: what the pipeline asks for, cut to what the API serves."""
    floor = ctx.now - dt.timedelta(days=RETENTION_DAYS) + RETENTION_MARGIN
    if ctx.first_collection:
        floor = max(floor, ctx.now - dt.timedelta(days=settings.backfill_days))
    return max(ctx.events_since, floor), ctx.events_until


# --- helpers ----------------------------------------------------------------------------------

def _google_error(exc: HttpError) -> tuple[str, set[str]]:
    """Google's error message and the reasons in its body."""
    reasons: set[str] = set()
    message = exc.reason or ""
    try:
        body = json.loads(exc.content.decode("utf-8", "replace"))
        error = body.get("error") or {}
        if isinstance(error, dict):
            message = error.get("message") or message
            reasons |= {e.get("reason") for e in error.get("errors") or [] if e.get("reason")}
            reasons |= {d.get("reason") for d in error.get("details") or [] if d.get("reason")}
            if error.get("status"):
                reasons.add(error["status"])
    except (ValueError, AttributeError):
        pass
    return str(message)[:300], reasons


def _oauth_error(exc: auth_exceptions.RefreshError) -> tuple[str, str]:
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    error = str(data.get("error") or "")
    description = str(data.get("error_description") or "")
    if not error:
        text = str(exc.args[0]) if exc.args else str(exc)
        error, _, description = text.partition(": ")
    return error or "refused", description


def _retry_after(response) -> float | None:
    value = response.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:   # an HTTP date
            from email.utils import parsedate_to_datetime
            return max(0.0, (parsedate_to_datetime(value)
                             - dt.datetime.now(dt.timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None


def _ca_bundle(settings: Settings) -> str | None:
    return settings.ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") \
        or os.environ.get("SSL_CERT_FILE") or None


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _redact(url: str) -> str:
    """The URL without query string or credentials."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _ts(value: Any) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _rfc3339(value: dt.datetime) -> str:
    ts = pd.Timestamp(value).tz_convert("UTC")
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _iso(value: Any) -> str | None:
    ts = _ts(value)
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")
