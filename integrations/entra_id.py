"""Microsoft Entra ID (Azure AD): users with their sign-in activity, the sign-in log and the
directory audit log, through MSAL and Microsoft Graph (DESIGN §3, §7, §9).

How it talks to Entra:

- **Token**: MSAL ``ConfidentialClientApplication`` with a client secret or a certificate
  (preferred), authority ``<authority_host>/<tenant_id>`` with ``instance_discovery=False`` (so a
  sovereign cloud or a test authority needs no call to the public discovery endpoint), scope
  ``<graph_url>/.default``. One application and one token per run: later calls are answered from
  MSAL's in-memory cache (which would renew the token only if a run outlived it). A refused token
  request is a dict with ``error`` / ``error_description`` — turned into a ``SourceError`` with the
  AADSTS code and what to check.
- **Graph** over the shared session of ``collector.http`` (one retry policy: 429/5xx with
  ``Retry-After``, backoff with jitter, capped attempts) and ``TokenPaginator`` for
  ``@odata.nextLink`` (absolute URLs; a link to another host than ``graph_url`` is refused — the
  bearer token is never sent elsewhere). MSAL uses the same session, so ``ca_bundle`` and
  ``REQUESTS_CA_BUNDLE`` apply to the authority too.
- ``GET /v1.0/users`` with ``$select`` of the fields below and ``$top`` at the documented maximum
  (500 while ``signInActivity`` is selected, 999 without): ⌈users / 500⌉ requests.
  ``signInActivity`` needs AuditLog.Read.All *and* an Entra ID P1/P2 licence. When Graph refuses it
  (403) the users are collected again without it and the source is **degraded** with a limitation
  naming the licence / permission — never a silent pass.
- ``GET /v1.0/auditLogs/signIns`` (interactive sign-ins, P1/P2 only) for the event window, so that
  sign-ins of accounts deleted between snapshots are still seen; ``status.errorCode`` 0 is a
  successful ``login``, anything else a failed one.
- ``GET /v1.0/auditLogs/directoryAudits`` filtered server-side by ``activityDateTime`` and the
  activities below → ``created`` / ``deleted`` / ``disabled`` / ``enabled`` / ``role_changed``.

Identity links (DESIGN §9): ``email`` is ``mail``, else the ``userPrincipalName`` (for a guest
without ``mail``, the invited address encoded in its ``…#EXT#@…`` UPN); ``employee_id`` is
``employeeId``. Guests are human accounts like members: they link to HR through aliases or are
orphaned accounts. ``privileged`` is not collected (directory role membership needs
RoleManagement.Read.Directory, beyond the two permissions declared): it is False, and the
snapshot says so.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlencode, urlsplit

import msal
import pandas as pd
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from collector.config import Secret, SourceConfig
from collector.errors import ConfigError, SourceError
from collector.http import DEFAULT_TIMEOUT, RetryPolicy, get_json, make_session, redact
from collector.integration import CollectContext, CollectResult, Integration, Permission
from collector.paging import TokenPaginator
from collector.schema import SCHEMAS, conform

RETENTION_DAYS = 30               # audit and sign-in logs with P1/P2 (free tenants: 7 days)
FREE_RETENTION_DAYS = 7
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com"
USER_FIELDS = ("id", "userPrincipalName", "mail", "displayName", "accountEnabled",
               "createdDateTime", "employeeId", "userType")
SIGN_IN_ACTIVITY = "signInActivity"
MAX_TOP = 999                     # /users page size limit …
MAX_TOP_WITH_SIGN_IN_ACTIVITY = 500   # … and while signInActivity is selected
NON_PREMIUM = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"
DENIED = "Authorization_RequestDenied"
USER_PERMISSION = "User.Read.All"
AUDIT_PERMISSION = "AuditLog.Read.All"

# directoryAudit activityDisplayName → canonical action ("Update user" depends on what changed)
AUDIT_ACTIONS = {
    "Add user": "created",
    "Delete user": "deleted",
    "Hard delete user": "deleted",
    "Disable account": "disabled",
    "Enable account": "enabled",
    "Restore user": "enabled",
    "Add member to role": "role_changed",
    "Add eligible member to role": "role_changed",
    "Add member to group": "role_changed",
    "Remove member from role": "role_changed",
    "Remove eligible member from role": "role_changed",
    "Remove member from group": "role_changed",
}
UPDATE_USER = "Update user"
AUDIT_ACTIVITIES = (*AUDIT_ACTIONS, UPDATE_USER)

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                  r"[0-9a-fA-F]{12}$")
TENANT = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
PEM_KEY = re.compile(r"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----.+?"
                     r"-----END \1-----", re.S)

# AADSTS code → what to check (error_description carries the code: "AADSTS7000215: …")
AADSTS_HINTS = {
    "7000215": "the client secret is wrong: use the secret's Value (not its Secret ID) from the "
               "app registration's Certificates & secrets and check client_secret",
    "7000222": "the client secret has expired: add a new one to the app registration and update "
               "client_secret",
    "7000218": "no credential was sent: set client_secret or client_certificate",
    "700016": "no application with this client_id in the tenant: check client_id and tenant_id, "
              "and that admin consent was granted in this tenant",
    "90002": "tenant not found: check tenant_id and authority_host (each national cloud has its "
             "own authority host)",
    "700027": "the certificate is not registered on the app registration or the private key does "
              "not belong to it: upload the certificate under Certificates & secrets and check "
              "client_certificate",
    "700024": "the client assertion is outside its validity window: check this machine's clock",
    "1002012": "the scope is not valid: check graph_url (the scope is <graph_url>/.default)",
    "70011": "the scope is not valid: check graph_url (the scope is <graph_url>/.default)",
    "500011": "the resource is not known in this tenant: check graph_url",
    "700023": "the authority does not accept this application: check authority_host and "
              "tenant_id",
}
AUTH_HINT = ("Graph refused the access token: check tenant_id, authority_host and graph_url (the "
             "token is requested for <graph_url>/.default)")


def _permission_hint(permission: str) -> str:
    return (f"the app registration needs the Microsoft Graph application permission {permission} "
            "with admin consent")


@dataclass(frozen=True)
class Settings:
    tenant_id: str
    client_id: str
    client_secret: Secret | None = None
    client_certificate: Secret | None = None
    client_certificate_key: Secret | None = None
    authority_host: str = DEFAULT_AUTHORITY_HOST
    graph_url: str = DEFAULT_GRAPH_URL
    ca_bundle: str | None = None
    max_attempts: int = 6
    backfill_days: int = RETENTION_DAYS
    page_size: int | None = None

    @classmethod
    def from_source(cls, source: SourceConfig) -> "Settings":
        """Read and type-check the options (secrets are not read); raises ``ConfigError``."""
        options = source.options
        values: dict[str, Any] = {}
        for key in ("tenant_id", "client_id"):
            value = source.require(key)
            if not isinstance(value, str) or not value.strip():
                raise source.error(key, "must be a non-empty string")
            values[key] = value.strip()
        if not GUID.match(values["client_id"]):
            raise source.error("client_id", "must be the application (client) id, a GUID")
        tenant = values["tenant_id"]
        if not TENANT.match(tenant) or tenant.lower() in ("common", "organizations",
                                                          "consumers"):
            raise source.error("tenant_id", "must be the directory (tenant) id — a GUID — or the "
                                            "tenant's domain name; 'common' / 'organizations' "
                                            "cannot be used by an application")
        for key in ("client_secret", "client_certificate", "client_certificate_key"):
            if key in options:
                if not isinstance(options[key], Secret):
                    raise source.error(key, "must be a secret reference, 'env:NAME' or "
                                            "'file:PATH' (secrets are never written in the "
                                            "configuration file)")
                values[key] = options[key]
        if ("client_secret" in values) == ("client_certificate" in values):
            raise source.error("client_secret" if "client_secret" in values
                               else "client_certificate",
                               "set exactly one of client_secret and client_certificate "
                               "(a certificate is preferred)")
        if "client_certificate_key" in values and "client_certificate" not in values:
            raise source.error("client_certificate_key", "is only used with client_certificate")
        for key in ("authority_host", "graph_url"):
            if key in options:
                value = options[key]
                if not isinstance(value, str) or not value.strip():
                    raise source.error(key, "must be a non-empty string")
                parts = urlsplit(value.strip())
                if parts.scheme != "https" or not parts.hostname or parts.query or \
                        parts.fragment:
                    raise source.error(key, "must be an https:// URL without query (MSAL and the "
                                            "bearer token need TLS)")
                values[key] = value.strip().rstrip("/")
        if re.search(r"/(v1\.0|beta)$", values.get("graph_url", "")):
            raise source.error("graph_url", "must be the Graph root (e.g. "
                                            "https://graph.microsoft.com), without /v1.0")
        if "ca_bundle" in options:
            value = options["ca_bundle"]
            if not isinstance(value, str) or not value.strip():
                raise source.error("ca_bundle", "must be the path of a PEM file")
            # Its existence is checked when collecting (``load_credential``), not here: the
            # configuration may be validated on another machine.
            values["ca_bundle"] = str(_relative_to_config(value.strip(), source))
        for key, low, high in (("max_attempts", 1, 20), ("backfill_days", 1, RETENTION_DAYS),
                               ("page_size", 1, MAX_TOP)):
            if key in options:
                value = options[key]
                if isinstance(value, bool) or not isinstance(value, int) \
                        or not low <= value <= high:
                    raise source.error(key, f"must be a whole number from {low} to {high}")
                values[key] = value
        return cls(**values)

    def users_top(self, sign_in_activity: bool) -> int:
        cap = MAX_TOP_WITH_SIGN_IN_ACTIVITY if sign_in_activity else MAX_TOP
        return min(self.page_size or cap, cap)


def _relative_to_config(value: str, source: SourceConfig) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else Path(source.file).resolve().parent / path


def load_credential(settings: Settings, source: SourceConfig) -> tuple[Any, str]:
    """The MSAL ``client_credential`` and a description of it (never the secret itself);
    also checks that ``ca_bundle`` exists. Raises ``ConfigError`` naming the key."""
    if settings.ca_bundle and not Path(settings.ca_bundle).is_file():
        raise source.error("ca_bundle", f"file not found: {settings.ca_bundle}")

    def reveal(key: str, secret: Secret) -> str:
        try:
            return secret.reveal()
        except ConfigError as exc:
            raise source.error(key, str(exc)) from None

    if settings.client_secret is not None:
        value = reveal("client_secret", settings.client_secret)
        if not value:
            raise source.error("client_secret", "is empty")
        return value, "client secret"
    text = reveal("client_certificate", settings.client_certificate)
    key_key = "client_certificate_key" if settings.client_certificate_key else \
        "client_certificate"
    key_text = reveal("client_certificate_key", settings.client_certificate_key) \
        if settings.client_certificate_key else text
    certs = PEM_CERTIFICATE.findall(text)
    if not certs:
        raise source.error("client_certificate", "holds no PEM certificate "
                                                 "(-----BEGIN CERTIFICATE-----)")
    match = PEM_KEY.search(key_text)
    if match is None:
        raise source.error(key_key, "holds no PEM private key: put it in the same file as the "
                                    "certificate or name it with client_certificate_key")
    if "ENCRYPTED" in match.group(1):
        raise source.error(key_key, "the private key is encrypted; store it unencrypted in a "
                                    "file readable only by the collector (or in a secret store "
                                    "mounted as a file)")
    key_pem = match.group(0)
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        cert = x509.load_pem_x509_certificate(certs[0].encode())
    except (ValueError, TypeError) as exc:
        raise source.error(key_key, f"cannot read the private key or certificate: {exc}") \
            from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise source.error(key_key, "Entra certificate credentials need an RSA key")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != \
            cert.public_key().public_bytes(serialization.Encoding.PEM, public):
        raise source.error(key_key, "the private key does not belong to the certificate")
    expires = cert.not_valid_after_utc
    if expires <= dt.datetime.now(dt.timezone.utc):
        raise SourceError(source.name, f"the client certificate expired on "
                                       f"{expires:%Y-%m-%d %H:%M} UTC: upload a new one to the "
                                       "app registration and update client_certificate")
    thumbprint = cert.fingerprint(hashes.SHA256()).hex().upper()
    # MSAL computes the SHA-256 thumbprint (x5t#S256, PS256) from public_certificate.
    return ({"private_key": key_pem, "public_certificate": certs[0]},
            f"certificate {thumbprint} (SHA-256), expires {expires:%Y-%m-%d}")


class Refused(Exception):
    """A Graph 403 the caller may degrade on (signInActivity, the sign-in log)."""

    def __init__(self, what: str, response: requests.Response):
        super().__init__(what)
        self.what = what
        try:
            self.body: Any = response.json()
        except ValueError:
            self.body = {"status": response.status_code, "text": (response.text or "")[:300]}
        error = self.body.get("error") if isinstance(self.body, dict) else None
        error = error if isinstance(error, dict) else {}
        self.code = str(error.get("code") or "")
        self.message = str(error.get("message") or "")[:200]

    @property
    def no_licence(self) -> bool:
        return self.code == NON_PREMIUM

    def reason(self) -> str:
        if self.no_licence:
            return "the tenant has no Microsoft Entra ID P1 or P2 licence"
        if self.code == DENIED:
            return (f"the application lacks the Microsoft Graph application permission "
                    f"{AUDIT_PERMISSION} (with admin consent)")
        return f"access was refused; check {AUDIT_PERMISSION} and the Entra ID P1/P2 licence"

    def describe(self) -> str:
        said = f"{self.code}: {self.message}" if self.code else "no error code"
        return f"{self.what} was refused (403 {said}) — {self.reason()}"


class _MsalHttp:
    """MSAL's http_client: the shared session with a default timeout (MSAL sets none)."""

    def __init__(self, session: requests.Session):
        self.session = session

    def get(self, url, **kwargs):
        kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
        return self.session.get(url, **kwargs)

    def post(self, url, **kwargs):
        kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
        return self.session.post(url, **kwargs)

    def close(self):   # the session is closed by GraphClient
        pass


class GraphClient:
    """The token and the Graph calls of one run (or one ``check``): auth, paging, raw pages."""

    def __init__(self, source: str, settings: Settings, credential: Any, *, raw=None):
        self.source, self.settings, self.raw = source, settings, raw
        self.graph_url = settings.graph_url
        self.scope = f"{settings.graph_url}/.default"
        self.authority = f"{settings.authority_host}/{settings.tenant_id}"
        self.session = make_session(ca_bundle=settings.ca_bundle,
                                    policy=RetryPolicy(max_attempts=settings.max_attempts))
        self.claims: dict[str, Any] = {}
        try:
            # OIDC discovery of the tenant happens here (GET …/v2.0/.well-known/…).
            self.app = msal.ConfidentialClientApplication(
                settings.client_id, client_credential=credential, authority=self.authority,
                instance_discovery=False, http_client=_MsalHttp(self.session),
                token_cache=msal.TokenCache())
        except Exception as exc:
            self.session.close()
            raise self._auth_error("OIDC discovery of the tenant", exc) from None

    def __enter__(self) -> "GraphClient":
        return self

    def __exit__(self, *exc) -> None:
        self.session.close()

    def _auth_error(self, what: str, exc: Exception) -> SourceError:
        where = f"{what} at {self.authority}"
        if isinstance(exc, requests.exceptions.SSLError):
            return SourceError(self.source, f"{where}: TLS verification failed — set ca_bundle "
                                            f"or REQUESTS_CA_BUNDLE ({exc})")
        if isinstance(exc, requests.exceptions.RequestException):
            return SourceError(self.source, f"{where}: cannot reach the authority "
                                            f"({type(exc).__name__}: {exc}); check "
                                            "authority_host and the network")
        text = str(exc)
        cause = exc.__cause__ or exc.__context__
        if cause is not None and re.search(r"AADSTS\d+|HTTP status", str(cause)):
            text = str(cause)          # MSAL re-raises discovery errors without the server's
        code = re.search(r"AADSTS(\d+)", text)
        hint = AADSTS_HINTS.get(code.group(1)) if code else None
        return SourceError(self.source, f"{where} failed: {text[:400]}; "
                                        f"{hint or 'check tenant_id and authority_host'}")

    # --- token --------------------------------------------------------------------------------
    def token(self) -> str:
        """The access token; MSAL answers from its cache after the first request."""
        try:
            result = self.app.acquire_token_for_client(scopes=[self.scope])
        except Exception as exc:
            raise self._auth_error("the token request", exc) from None
        if result and result.get("access_token"):
            if not self.claims:
                self.claims = _claims(result["access_token"])
            return result["access_token"]
        raise SourceError(self.source, token_failure(result or {}, self.authority, self.scope))

    # --- graph --------------------------------------------------------------------------------
    def get(self, url: str, *, what: str, permission: str, degradable: bool = False) -> dict:
        """One Graph GET (retries inside the session); a 403 raises ``Refused`` when
        ``degradable``, every other failure is a ``SourceError``."""
        seen: dict[str, requests.Response] = {}

        def keep(response, *args, **kwargs):
            seen["response"] = response

        headers = {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}
        try:
            return get_json(self.session, url, source=self.source, what=what,
                            auth_hint=AUTH_HINT, permission_hint=_permission_hint(permission),
                            headers=headers, hooks={"response": keep})
        except SourceError:
            response = seen.get("response")
            if degradable and response is not None and response.status_code == 403:
                raise Refused(what, response) from None
            raise

    def follow(self, link: str, what: str) -> str:
        """An ``@odata.nextLink`` to fetch: only on graph_url's scheme, host and port."""
        own, next_ = urlsplit(self.graph_url), urlsplit(link)
        same = (next_.scheme == "https" and (next_.hostname or "").lower() ==
                (own.hostname or "").lower() and (next_.port or 443) == (own.port or 443)
                and next_.path.startswith(own.path.rstrip("/") + "/v1.0/"))
        if not same:
            raise SourceError(self.source, f"{what}: refused to follow @odata.nextLink to "
                                           f"{redact(link)} — it is not on graph_url "
                                           f"{self.graph_url} (the access token is sent only "
                                           "there)")
        return link

    def pages(self, request: str, path: str, params: dict[str, Any], *, what: str,
              permission: str, degradable: bool = False) -> Iterator[list[dict[str, Any]]]:
        """Every page of ``path``, each recorded as raw evidence (a refusal too)."""
        endpoint = self.graph_url + path
        first = f"{endpoint}?{graph_query(params)}"
        parameters = {k: str(v) for k, v in params.items()}

        def fetch(link):
            url = first if link is None else self.follow(link, what)
            try:
                body = self.get(url, what=what, permission=permission, degradable=degradable)
            except Refused as refused:
                self.record(request, refused.body, endpoint, parameters, 0)
                raise
            value = body.get("value") if isinstance(body, dict) else None
            self.record(request, body, endpoint, parameters,
                        len(value) if isinstance(value, list) else 0)
            if not isinstance(value, list):
                raise SourceError(self.source, f"{what} ({redact(url)}): the answer has no "
                                               "'value' list")
            return body

        for page in TokenPaginator(fetch, lambda p: p.get("@odata.nextLink"),
                                   source=self.source, request=f"GET {path}"):
            yield page["value"]

    def record(self, request, body, endpoint, parameters, records) -> None:
        if self.raw is not None:
            self.raw.page(request, body, endpoint=endpoint, parameters=parameters,
                          records=records)

    # --- the collection calls -----------------------------------------------------------------
    def users(self) -> tuple[list[dict[str, Any]], Refused | None]:
        """Every user with signInActivity; without it when Graph refuses it (403)."""
        params = {"$select": ",".join((*USER_FIELDS, SIGN_IN_ACTIVITY)),
                  "$top": self.settings.users_top(True)}
        try:
            return self._all("graph.users", "/v1.0/users", params, what="list users with "
                             "signInActivity", permission=AUDIT_PERMISSION, degradable=True), None
        except Refused as refused:
            params = {"$select": ",".join(USER_FIELDS), "$top": self.settings.users_top(False)}
            return self._all("graph.users-without-signInActivity", "/v1.0/users", params,
                             what="list users", permission=USER_PERMISSION), refused

    def directory_audits(self, since: dt.datetime, until: dt.datetime) -> list[dict[str, Any]]:
        activities = " or ".join(f"activityDisplayName eq '{a}'" for a in AUDIT_ACTIVITIES)
        params = {"$filter": f"activityDateTime ge {odata_time(since)} and activityDateTime le "
                             f"{odata_time(until, ceil=True)} and ({activities})"}
        return self._all("graph.auditLogs.directoryAudits", "/v1.0/auditLogs/directoryAudits",
                         params, what="read the directory audit log",
                         permission=AUDIT_PERMISSION)

    def sign_ins(self, since: dt.datetime, until: dt.datetime
                 ) -> tuple[list[dict[str, Any]], Refused | None]:
        params = {"$filter": f"createdDateTime ge {odata_time(since)} and createdDateTime le "
                             f"{odata_time(until, ceil=True)}"}
        try:
            return self._all("graph.auditLogs.signIns", "/v1.0/auditLogs/signIns", params,
                             what="read the sign-in log", permission=AUDIT_PERMISSION,
                             degradable=True), None
        except Refused as refused:
            return [], refused

    def _all(self, request, path, params, **kwargs) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for value in self.pages(request, path, params, **kwargs):
            out.extend(value)
        return out


class EntraId(Integration):
    type = "entra_id"
    title = "Microsoft Entra ID"
    tables = ("accounts", "events")
    log_retention_days = RETENTION_DAYS
    required_options = ("tenant_id", "client_id")
    options = {
        "tenant_id": "directory (tenant) id, a GUID (or the tenant's domain name); also the "
                     "accounts' instance",
        "client_id": "application (client) id of the app registration",
        "client_secret": "client secret as 'env:NAME' or 'file:PATH' (set this or "
                         "client_certificate)",
        "client_certificate": "'file:PATH' of a PEM holding the certificate and, unless "
                              "client_certificate_key is set, its unencrypted RSA private key "
                              "(preferred over a secret)",
        "client_certificate_key": "'file:PATH' of the PEM private key when it is kept apart "
                                  "from the certificate (optional)",
        "authority_host": "sign-in authority (default https://login.microsoftonline.com; "
                          "national clouds and tests override it)",
        "graph_url": "Microsoft Graph root (default https://graph.microsoft.com); the token "
                     "scope is <graph_url>/.default",
        "ca_bundle": "PEM file of CAs to trust for the authority and Graph (default: "
                     "REQUESTS_CA_BUNDLE / SSL_CERT_FILE / the system bundle)",
        "max_attempts": "HTTP attempts per request, retries on 429/5xx included (1-20, "
                        "default 6)",
        "backfill_days": "days of audit and sign-in logs the first collection pulls (1-30, "
                         "default 30)",
        "page_size": "users per Graph page (1-999; default the maximum: 500 while "
                     "signInActivity is selected, 999 without)",
    }
    permissions = (
        Permission("graph-application", USER_PERMISSION,
                   "list every user, members and guests: id, userPrincipalName, mail, "
                   "accountEnabled, createdDateTime, employeeId, userType"),
        Permission("graph-application", AUDIT_PERMISSION,
                   "users' signInActivity, the sign-in log and the directory audit log "
                   "(signInActivity and sign-ins also need an Entra ID P1 or P2 licence)"),
    )

    @classmethod
    def validate(cls, source: SourceConfig) -> None:
        super().validate(source)
        Settings.from_source(source)

    def collect(self, ctx: CollectContext) -> CollectResult:
        settings = Settings.from_source(ctx.config)
        credential, credential_text = load_credential(settings, ctx.config)
        since, until = event_window(ctx, settings)
        with GraphClient(ctx.name, settings, credential, raw=ctx.raw) as graph:
            graph.token()        # fail early, with the AADSTS code, before any Graph call
            users, activity_refused = graph.users()
            audits: list[dict] = []
            sign_ins: list[dict] = []
            sign_ins_refused = None
            if since < until:
                audits = graph.directory_audits(since, until)
                sign_ins, sign_ins_refused = graph.sign_ins(since, until)
            claims = graph.claims
        instance = settings.tenant_id
        accounts, notes = build_accounts(users, source=ctx.name, instance=instance,
                                         sign_in_activity=activity_refused is None)
        events = build_events(audits, sign_ins, users, source=ctx.name, instance=instance)
        ctx.log.info("entra_id %s: %d users, %d events (%s .. %s)%s", instance, len(accounts),
                     len(events), since.isoformat(), until.isoformat(),
                     " — degraded" if activity_refused or sign_ins_refused else "")

        limitations = []
        if activity_refused is not None:
            limitations.append(
                activity_refused.describe() + ": last sign-in times need the AuditLog.Read.All "
                "application permission and an Entra ID P1/P2 licence; users were collected "
                "without signInActivity, so their last sign-in is unknown")
        if sign_ins_refused is not None:
            limitations.append(
                sign_ins_refused.describe() + ": the sign-in log needs the AuditLog.Read.All "
                "application permission and an Entra ID P1/P2 licence; sign-ins between "
                f"{_iso(since)} and {_iso(until)} (including those of accounts deleted since) "
                "were not collected")
        if any(r is not None and r.no_licence for r in (activity_refused, sign_ins_refused)):
            limitations.append(
                f"without an Entra ID P1/P2 licence the tenant keeps its directory audit log "
                f"for {FREE_RETENTION_DAYS} days only: collect at least every "
                f"{FREE_RETENTION_DAYS} days or account changes are lost")
        if notes["last_login_fallback"]:
            fallback = notes["last_login_fallback"]
            limitations.append(
                f"{len(fallback)} account(s) have no lastSuccessfulSignInDateTime; their last "
                "sign-in is taken from lastSignInDateTime, which also counts failed interactive "
                "attempts: " + ", ".join(fallback[:20]) + (" …" if len(fallback) > 20 else ""))
        sign_in_activity = activity_refused is None
        sign_in_log = sign_ins_refused is None
        app_name = claims.get("app_displayname")
        return CollectResult(
            tables={"accounts": accounts, "events": events},
            principal=f"application {settings.client_id} in tenant {instance}"
                      + (f" ({app_name})" if app_name else ""),
            instances=[instance],
            limitations=limitations,
            degraded=not (sign_in_activity and sign_in_log),
            sign_in_data=sign_in_activity or sign_in_log,
            extra={
                "tenant_id": instance,
                "token_tenant_id": claims.get("tid"),
                "authority_host": settings.authority_host,
                "graph_url": settings.graph_url,
                "token_scope": graph.scope,
                "credential": credential_text,
                "granted_roles": claims.get("roles"),
                "sign_in_activity": sign_in_activity,
                "sign_in_log": sign_in_log,
                "users_page_size": settings.users_top(sign_in_activity),
                "guests": notes["guests"],
                "last_login_fallback": notes["last_login_fallback"],
                "privileged": "not collected (directory role membership needs "
                              "RoleManagement.Read.Directory, which this integration does not "
                              "request); every account has privileged = false — role "
                              "assignments appear as role_changed events",
                "events_window": {"start": _iso(since), "end": _iso(until)},
            })

    def check(self, ctx: CollectContext) -> list[str]:
        """A token, one users call ($top=1, with signInActivity), one call to each log."""
        try:
            settings = Settings.from_source(ctx.config)
            credential, _ = load_credential(settings, ctx.config)
        except (ConfigError, SourceError) as exc:
            return [str(exc)]
        problems: list[str] = []
        try:
            with GraphClient(ctx.name, settings, credential) as graph:
                graph.token()
                base = settings.graph_url + "/v1.0"
                try:
                    graph.get(f"{base}/users?" + graph_query(
                        {"$select": f"id,{SIGN_IN_ACTIVITY}", "$top": 1}),
                        what="list users with signInActivity", permission=AUDIT_PERMISSION,
                        degradable=True)
                except Refused as refused:
                    problems.append(refused.describe() + " (collections will be degraded: no "
                                                         "last sign-in times)")
                    try:
                        graph.get(f"{base}/users?" + graph_query({"$select": "id", "$top": 1}),
                                  what="list users", permission=USER_PERMISSION)
                    except SourceError as exc:
                        problems.append(str(exc))
                for path, what in (("auditLogs/directoryAudits", "read the directory audit log"),
                                   ("auditLogs/signIns", "read the sign-in log")):
                    try:
                        graph.get(f"{base}/{path}?$top=1", what=what,
                                  permission=AUDIT_PERMISSION, degradable=True)
                    except Refused as refused:
                        problems.append(refused.describe())
        except SourceError as exc:
            problems.append(str(exc))
        return problems


# --- helpers (no I/O) -------------------------------------------------------------------------

def graph_query(params: dict[str, Any]) -> str:
    """OData query string: ``$`` and ``,`` kept readable, spaces as %20 (never ``+``)."""
    return urlencode({k: str(v) for k, v in params.items()}, quote_via=quote, safe="$,'():")


def odata_time(value: dt.datetime, *, ceil: bool = False) -> str:
    """An OData DateTimeOffset literal at whole seconds (``ceil`` rounds up, for upper bounds)."""
    value = value.astimezone(dt.timezone.utc)
    if ceil and value.microsecond:
        value += dt.timedelta(seconds=1)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def token_failure(result: dict[str, Any], authority: str, scope: str) -> str:
    """The message for a refused token request (MSAL returns the error, it does not raise)."""
    error = result.get("error") or "unknown_error"
    description = str(result.get("error_description") or "").strip()
    first = re.split(r"\r?\n| Trace ID:", description, maxsplit=1)[0].strip()
    codes = [str(c) for c in result.get("error_codes") or []]
    found = re.search(r"AADSTS(\d+)", description)
    code = found.group(1) if found else (codes[0] if codes else None)
    hint = AADSTS_HINTS.get(code or "") or (
        "check client_secret" if error == "invalid_client" else
        "check graph_url (the scope is <graph_url>/.default)" if error == "invalid_scope" else
        "check tenant_id, client_id and the credential")
    label = f"AADSTS{code}" if code and f"AADSTS{code}" not in first else None
    return (f"token request to {authority} for {scope} failed: {error}"
            + (f" ({label})" if label else "") + f": {first[:300] or 'no description'} — {hint}")


def _claims(token: str) -> dict[str, Any]:
    """The access token's claims, best effort, for the record (not for any decision)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return data if isinstance(data, dict) else {}
    except (IndexError, ValueError):
        return {}


def event_window(ctx: CollectContext, settings: Settings) -> tuple[dt.datetime, dt.datetime]:
    """The log window: what the pipeline asks for, cut to what Entra keeps (30 days)."""
    floor = ctx.now - dt.timedelta(days=RETENTION_DAYS)
    if ctx.first_collection:
        floor = max(floor, ctx.now - dt.timedelta(days=settings.backfill_days))
    return max(ctx.events_since, floor), ctx.events_until


def guest_email(upn: str | None) -> str | None:
    """The invited address of a B2B guest UPN ``alice_partner.example#EXT#@tenant`` (the last
    ``_`` stands for ``@``: domain names hold no underscore)."""
    if not upn or "#ext#" not in upn.lower():
        return None
    local = upn[:upn.lower().index("#ext#")]
    if "_" not in local:
        return None
    name, domain = local.rsplit("_", 1)
    email = f"{name}@{domain}"
    return email if EMAIL.match(email) else None


def account_email(upn: str | None, mail: str | None) -> str | None:
    """``mail``, else the UPN (a guest's: the address inside it)."""
    if mail and str(mail).strip():
        return str(mail).strip()
    if upn and "#ext#" in upn.lower():
        return guest_email(upn)
    return upn or None


def build_accounts(users: list[dict[str, Any]], *, source: str, instance: str,
                   sign_in_activity: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per user. With ``sign_in_activity`` (it was selected and returned), an absent or
    empty ``signInActivity`` means "never signed in"; without it, last sign-in is unknown."""
    rows, fallback, guests = [], [], 0
    for user in users:
        upn = user.get("userPrincipalName")
        guest = str(user.get("userType") or "").lower() == "guest" or \
            "#ext#" in str(upn or "").lower()
        guests += guest
        last_login = never = None
        if sign_in_activity:
            activity = user.get(SIGN_IN_ACTIVITY) or {}
            success = _ts(activity.get("lastSuccessfulSignInDateTime"))
            attempted = _ts(activity.get("lastSignInDateTime"))
            other = _ts(activity.get("lastNonInteractiveSignInDateTime"))
            last_login = success or attempted
            if success is None and attempted is not None:
                fallback.append(upn or user.get("id"))
            never = success is None and attempted is None and other is None
        rows.append({
            "source": source, "instance": instance,
            "account_id": user.get("id"),
            "login": upn or user.get("id"),
            "email": account_email(upn, user.get("mail")),
            "display_name": user.get("displayName"),
            "kind": "human",
            "enabled": user.get("accountEnabled"),
            "created_at": _ts(user.get("createdDateTime")),
            "disabled_at": None,
            "last_login_at": last_login,
            "never_logged_in": never,
            "privileged": False,
            "groups": [],
            "employee_id": (str(user["employeeId"]).strip() or None)
            if user.get("employeeId") else None,
        })
    frame = pd.DataFrame(rows, columns=list(SCHEMAS["accounts"]))
    return conform(frame, "accounts", source=source), {
        "last_login_fallback": sorted(str(f) for f in fallback), "guests": guests}


def _flag(value: Any) -> bool | None:
    """A modifiedProperties value (``"[false]"``, ``"false"``, ``'["False"]'``) as a bool."""
    if value is None:
        return None
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
    if isinstance(parsed, list):
        parsed = parsed[0] if parsed else None
    if isinstance(parsed, bool):
        return parsed
    if isinstance(parsed, str):
        return {"true": True, "false": False}.get(parsed.strip().strip('[]"').strip().lower())
    return None


def _user_target(record: dict[str, Any]) -> dict[str, Any]:
    for target in record.get("targetResources") or []:
        if str((target or {}).get("type") or "").lower() == "user":
            return target
    return {}


def _enabled_change(record: dict[str, Any], target: dict[str, Any]) -> str | None:
    """``Update user``: disabled / enabled when AccountEnabled changed, else None."""
    properties = list(target.get("modifiedProperties") or []) + \
        list(record.get("modifiedProperties") or [])
    for prop in properties:
        if str((prop or {}).get("displayName") or "").lower() == "accountenabled":
            old, new = _flag(prop.get("oldValue")), _flag(prop.get("newValue"))
            if new is False and old is not False:
                return "disabled"
            if new is True and old is not True:
                return "enabled"
    return None


def _undeleted(upn: str | None, object_id: str | None) -> str | None:
    """Graph renames a deleted user's UPN to ``<object id without dashes><upn>``: undo it."""
    if upn and object_id:
        prefix = object_id.replace("-", "").lower()
        if upn.lower().startswith(prefix) and len(upn) > len(prefix):
            return upn[len(prefix):]
    return upn


def map_audit(record: dict[str, Any], *, source: str, instance: str,
              logins: dict[str, str]) -> dict[str, Any] | None:
    """A directoryAudit → an ``events`` row, or None for activities we do not track.
    ``logins`` maps user object ids to current UPNs (a renamed or deleted user keeps its id)."""
    activity = record.get("activityDisplayName")
    target = _user_target(record)
    if activity == UPDATE_USER:
        action = _enabled_change(record, target)
    else:
        action = AUDIT_ACTIONS.get(activity)
    if action is None:
        return None
    object_id = target.get("id")
    login = logins.get(str(object_id).lower()) if object_id else None
    login = login or _undeleted(target.get("userPrincipalName"), object_id)
    initiated = record.get("initiatedBy") or {}
    user, app = initiated.get("user") or {}, initiated.get("app") or {}
    actor = user.get("userPrincipalName") or app.get("displayName") or \
        app.get("servicePrincipalName") or user.get("id") or app.get("servicePrincipalId")
    result = str(record.get("result") or "").lower()
    return {
        "source": source, "instance": instance, "at": _ts(record.get("activityDateTime")),
        "action": action, "actor": actor, "target_account": login, "target_email": None,
        "outcome": "success" if result == "success" else "failure",
        "event_id": record.get("id"),
    }


def map_sign_in(record: dict[str, Any], *, source: str, instance: str,
                logins: dict[str, str]) -> dict[str, Any]:
    """A sign-in log entry → a ``login`` event; ``status.errorCode`` 0 is a success."""
    user_id = record.get("userId")
    upn = record.get("userPrincipalName")
    login = (logins.get(str(user_id).lower()) if user_id else None) or upn
    code = (record.get("status") or {}).get("errorCode")
    try:
        success = code is not None and int(code) == 0
    except (TypeError, ValueError):
        success = False
    return {
        "source": source, "instance": instance, "at": _ts(record.get("createdDateTime")),
        "action": "login", "actor": upn or user_id, "target_account": login,
        "target_email": None, "outcome": "success" if success else "failure",
        "event_id": record.get("id"),
    }


def build_events(audits: list[dict[str, Any]], sign_ins: list[dict[str, Any]],
                 users: list[dict[str, Any]], *, source: str, instance: str) -> pd.DataFrame:
    logins = {str(u["id"]).lower(): u.get("userPrincipalName") for u in users
              if u.get("id") and u.get("userPrincipalName")}
    emails = {str(u["userPrincipalName"]).lower(): account_email(u["userPrincipalName"],
                                                                 u.get("mail"))
              for u in users if u.get("userPrincipalName")}
    rows, seen = [], set()
    candidates = [map_audit(r, source=source, instance=instance, logins=logins) for r in audits]
    candidates += [map_sign_in(r, source=source, instance=instance, logins=logins)
                   for r in sign_ins]
    for row in candidates:
        if row is None or not row["event_id"] or row["event_id"] in seen:
            continue
        seen.add(row["event_id"])
        target = row["target_account"]
        if target:
            row["target_email"] = emails.get(target.lower()) or account_email(target, None)
            if row["target_email"] and not EMAIL.match(row["target_email"]):
                row["target_email"] = None
        rows.append(row)
    rows.sort(key=lambda r: (r["at"], r["event_id"]))
    frame = pd.DataFrame(rows, columns=list(SCHEMAS["events"]))
    return conform(frame, "events", source=source)


def _ts(value: Any) -> pd.Timestamp | None:
    """A Graph time; empty values and the ``0001-01-01`` "never" sentinel are None."""
    if value is None or value == "":
        return None
    text = str(value)
    if text.startswith(("0001-", "1601-")):
        return None
    try:
        ts = pd.Timestamp(text)
    except (ValueError, OverflowError):
        return None
    if ts.year < 1970:
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _iso(value: Any) -> str | None:
    ts = _ts(value) if not isinstance(value, dt.datetime) else pd.Timestamp(value)
    return None if ts is None else ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
