"""A local emulator of Microsoft Entra ID sign-in (the v2.0 token endpoint) and the Microsoft
Graph calls the ``entra_id`` integration makes, over **HTTPS** with a throwaway CA.

MSAL refuses ``http://`` authorities, so the emulator serves TLS on 127.0.0.1 (ephemeral port)
with a certificate from a test CA made by ``trustme``; clients trust ``ca_path``. One server plays
both parts: ``authority_host`` and ``graph_url`` are the same base URL. It speaks the documented
protocol rather than whatever our code happens to send:

- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` — what MSAL reads in its constructor
  (with ``instance_discovery=False``); an unknown tenant gets 400 ``AADSTS90002``.
- ``POST /{tenant}/oauth2/v2.0/token`` — ``grant_type=client_credentials`` with a
  ``client_secret`` or a ``client_assertion`` (a JWT signed with the key of a registered
  certificate, found by its ``x5t#S256`` / ``x5t`` thumbprint and verified). Errors are the
  ``{"error", "error_description", "error_codes"}`` bodies Entra sends: a wrong secret is 401
  ``invalid_client`` with ``AADSTS7000215``, a scope other than ``<graph_url>/.default`` is 400
  ``invalid_scope``. Access tokens are JWTs carrying ``tid``, ``appid`` and the granted ``roles``.
- ``GET /v1.0/users`` — ``$select`` (``signInActivity`` needs AuditLog.Read.All and a premium
  tenant, else 403), ``$top`` (999, or 500 with ``signInActivity``; more is a 400), absolute
  ``@odata.nextLink`` with ``$skiptoken``.
- ``GET /v1.0/auditLogs/directoryAudits`` and ``GET /v1.0/auditLogs/signIns`` — newest first,
  ``$filter`` really applied (``eq ne ge gt le lt``, ``and``, ``or``, parentheses; on
  ``activityDateTime`` / ``activityDisplayName`` / ``createdDateTime`` / ``status/errorCode`` …),
  ``$top`` ≤ 999. Sign-ins need a premium tenant: otherwise 403
  ``Authentication_RequestFromNonPremiumTenantOrB2CTenant``.
- Graph errors are ``{"error": {"code", "message", "innerError"}}``; a missing or unknown bearer
  token is 401 ``InvalidAuthenticationToken``; a missing application permission is 403
  ``Authorization_RequestDenied``.

Seeding (for tests and ``accessproof demo``)::

    with GraphEmulator(TENANT, CLIENT_ID, "s3cret", premium=True) as graph:
        alice = graph.add_user("alice@corp.example", employee_id="E1",
                               last_success=dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc))
        graph.add_guest("pat@partner.example")
        graph.add_audit("Add user", at, "alice@corp.example")
        graph.add_sign_in("alice@corp.example", at, error_code=0)
        # source options: authority_host=graph.authority_host, graph_url=graph.graph_url,
        #                 ca_bundle=graph.ca_path

Fault injection: ``throttle_next``, ``fail_next``, ``next_link_base``, ``repeat_next_link``,
``revoke_tokens``; every request is kept in ``requests`` (secrets left out) for counting.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, quote, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ._server import LocalServer

USER_PERMISSION = "User.Read.All"
AUDIT_PERMISSION = "AuditLog.Read.All"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
NON_PREMIUM = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"
USER_FIELDS = ("id", "userPrincipalName", "mail", "displayName", "accountEnabled",
               "createdDateTime", "employeeId", "userType", "signInActivity", "givenName",
               "surname", "jobTitle", "department")
# What Graph returns for /users without $select (the documented default set, trimmed).
DEFAULT_USER_FIELDS = ("id", "displayName", "givenName", "surname", "jobTitle", "mail",
                       "userPrincipalName")
MAX_TOP = 999
MAX_TOP_WITH_SIGN_IN_ACTIVITY = 500
_EMPTY_ACTIVITY = "0001-01-01T00:00:00Z"     # Graph's "never" for some signInActivity fields


def _utc(at: dt.datetime | str | None) -> dt.datetime | None:
    if at is None:
        return None
    if isinstance(at, str):
        at = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return at.astimezone(dt.timezone.utc)


def _iso(at: dt.datetime | None) -> str | None:
    if at is None:
        return None
    text = at.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{at.microsecond:06d}0Z" if at.microsecond else "Z")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_certificate(common_name: str = "accessproof", *, days: int = 365
                     ) -> tuple[str, str]:
    """A self-signed RSA certificate for certificate credentials: ``(key_pem, cert_pem)``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


class _GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class _TokenError(Exception):
    def __init__(self, status: int, error: str, code: int, description: str):
        super().__init__(description)
        self.status, self.error, self.code, self.description = status, error, code, description


# --- OData $filter: a small parser for what the audit and sign-in APIs accept -------------------

_FILTER_TOKEN = re.compile(r"\s*(\(|\)|'(?:[^']|'')*'|[^\s()]+)")
_OPS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
        "ge": lambda a, b: a is not None and a >= b, "gt": lambda a, b: a is not None and a > b,
        "le": lambda a, b: a is not None and a <= b, "lt": lambda a, b: a is not None and a < b}


def parse_filter(text: str, fields: dict[str, Callable[[dict], Any]]
                 ) -> Callable[[dict], bool]:
    """Compile an OData ``$filter`` over the given fields; raises ``ValueError`` when invalid."""
    tokens = _FILTER_TOKEN.findall(text)
    if "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", text):
        raise ValueError("unreadable filter")
    pos = 0

    def peek():
        return tokens[pos].lower() if pos < len(tokens) else None

    def take():
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("filter ends early")
        pos += 1
        return tokens[pos - 1]

    def literal(token: str):
        if token.startswith("'"):
            return token[1:-1].replace("''", "'")
        if token.lower() in ("true", "false"):
            return token.lower() == "true"
        if token.lower() == "null":
            return None
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}T[0-9:.]+(Z|[+-]\d{2}:\d{2})", token):
            return _utc(token)
        raise ValueError(f"unsupported literal {token!r}")

    def atom():
        if peek() == "(":
            take()
            inner = disjunction()
            if take() != ")":
                raise ValueError("missing ')'")
            return inner
        field, op, value = take(), take().lower(), literal(take())
        if field not in fields:
            raise ValueError(f"unsupported filter property {field!r}")
        if op not in _OPS:
            raise ValueError(f"unsupported operator {op!r}")
        getter, compare = fields[field], _OPS[op]
        return lambda record: compare(getter(record), value)

    def conjunction():
        parts = [atom()]
        while peek() == "and":
            take()
            parts.append(atom())
        return lambda record: all(p(record) for p in parts)

    def disjunction():
        parts = [conjunction()]
        while peek() == "or":
            take()
            parts.append(conjunction())
        return lambda record: any(p(record) for p in parts)

    predicate = disjunction()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r}")
    return predicate


_AUDIT_FIELDS: dict[str, Callable[[dict], Any]] = {
    "activityDateTime": lambda r: r["_at"],
    "activityDisplayName": lambda r: r["activityDisplayName"],
    "category": lambda r: r["category"],
    "loggedByService": lambda r: r["loggedByService"],
    "result": lambda r: r["result"],
    "correlationId": lambda r: r["correlationId"],
    "initiatedBy/user/userPrincipalName":
        lambda r: ((r["initiatedBy"] or {}).get("user") or {}).get("userPrincipalName"),
}
_SIGN_IN_FIELDS: dict[str, Callable[[dict], Any]] = {
    "createdDateTime": lambda r: r["_at"],
    "userPrincipalName": lambda r: r["userPrincipalName"],
    "userId": lambda r: r["userId"],
    "appDisplayName": lambda r: r["appDisplayName"],
    "status/errorCode": lambda r: r["status"]["errorCode"],
}


class GraphEmulator(LocalServer):
    """Entra ID token endpoint + Microsoft Graph on https://127.0.0.1:<ephemeral port>."""

    def __init__(self, tenant_id: str = "8f3c2a6e-1b7d-4c9a-9e55-0d2b7a1c4f10",
                 client_id: str = "5d0c3e8a-7f41-4b6e-a2c9-3e1f9b7d6a20",
                 client_secret: str | None = "emulator-secret", *, premium: bool = True,
                 certificate: str | None = None,
                 permissions: Iterable[str] = (USER_PERMISSION, AUDIT_PERMISSION),
                 domain: str = "corp.onmicrosoft.com", log_page_size: int = 100,
                 app_name: str = "accessproof-collector", ca_dir: str | Path | None = None):
        self.tenant_id, self.client_id, self.client_secret = tenant_id, client_id, client_secret
        self.premium = premium
        self.permissions = set(permissions)
        self.domain = domain
        self.log_page_size = log_page_size
        self.app_name = app_name
        self._ca_dir = Path(ca_dir) if ca_dir else None
        self._own_ca_dir: Path | None = None
        self._lock = threading.RLock()
        self._certificates: dict[str, Any] = {}       # base64url thumbprint → public key
        self._initial_certificate = certificate
        if certificate:
            self.register_certificate(certificate)
        self._users: dict[str, dict[str, Any]] = {}   # object id → user, in insertion order
        self._audits: list[dict[str, Any]] = []
        self._sign_ins: list[dict[str, Any]] = []
        self._tokens: dict[str, float] = {}           # access token → expiry (epoch seconds)
        self._skiptokens: dict[str, tuple[str, int]] = {}
        self._faults: list[tuple[str, int, str, str, dict]] = []   # (path prefix, status, ...)
        self._next_link_base: str | None = None
        self._repeat_next_link = False
        self._signing_key = secrets.token_bytes(32)
        self.requests: list[dict[str, Any]] = []
        self.ca_path: str | None = None

    # --- seeding ------------------------------------------------------------------------------
    def add_user(self, upn: str, *, display_name: str | None = None, mail: str | None = None,
                 enabled: bool = True, created: dt.datetime | str | None = None,
                 employee_id: str | None = None, user_type: str = "Member",
                 last_success: dt.datetime | str | None = None,
                 last_sign_in: dt.datetime | str | None = None,
                 last_non_interactive: dt.datetime | str | None = None,
                 sign_in_activity: dict | None = None, id: str | None = None,
                 **extra: Any) -> dict[str, Any]:
        """Add a user; returns its Graph object (with ``id``).

        ``mail`` defaults to the UPN for members (pass ``mail=""`` for none). Sign-in activity:
        ``last_success`` → ``lastSuccessfulSignInDateTime``, ``last_sign_in`` →
        ``lastSignInDateTime`` (interactive, successful or not), ``last_non_interactive``; with
        none of them the user has never signed in and Graph returns no ``signInActivity``.
        ``sign_in_activity`` sets the raw object instead (e.g. with ``0001-01-01`` values).
        """
        user_id = id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.tenant_id}/{upn.lower()}"))
        if sign_in_activity is None and any((last_success, last_sign_in, last_non_interactive)):
            sign_in_activity = {
                "lastSignInDateTime": _iso(_utc(last_sign_in or last_success)),
                "lastSignInRequestId": str(uuid.uuid4()) if (last_sign_in or last_success)
                else None,
                "lastNonInteractiveSignInDateTime": _iso(_utc(last_non_interactive))
                or _EMPTY_ACTIVITY,
                "lastNonInteractiveSignInRequestId": "" if not last_non_interactive
                else str(uuid.uuid4()),
                "lastSuccessfulSignInDateTime": _iso(_utc(last_success)),
                "lastSuccessfulSignInRequestId": str(uuid.uuid4()) if last_success else None,
            }
        user = {
            "id": user_id, "userPrincipalName": upn,
            "mail": (upn if user_type == "Member" else None) if mail is None else (mail or None),
            "displayName": display_name if display_name is not None else upn.split("@")[0],
            "accountEnabled": enabled,
            "createdDateTime": _iso(_utc(created) or dt.datetime(2024, 1, 2, 9, 0,
                                                                 tzinfo=dt.timezone.utc)),
            "employeeId": employee_id, "userType": user_type,
            "signInActivity": sign_in_activity, "givenName": None, "surname": None,
            "jobTitle": None, "department": None, **extra,
        }
        with self._lock:
            self._users[user_id] = user
        return user

    def add_guest(self, email: str, **kwargs: Any) -> dict[str, Any]:
        """A B2B guest: UPN ``alice_partner.example#EXT#@<domain>``, ``mail`` the invited email."""
        local_part = email.replace("@", "_")
        kwargs.setdefault("mail", email)
        kwargs.setdefault("display_name", email.split("@")[0].title())
        return self.add_user(f"{local_part}#EXT#@{self.domain}", user_type="Guest", **kwargs)

    def add_users(self, count: int, *, prefix: str = "user", domain: str = "corp.example",
                  **kwargs: Any) -> list[dict[str, Any]]:
        """``count`` members ``<prefix>0000@<domain>`` onwards (bulk, for paging tests)."""
        users = []
        with self._lock:
            for i in range(count):
                users.append(self.add_user(f"{prefix}{i:04d}@{domain}", **kwargs))
        return users

    def user(self, upn: str) -> dict[str, Any] | None:
        with self._lock:
            return next((u for u in self._users.values()
                         if u["userPrincipalName"].lower() == upn.lower()), None)

    def set_enabled(self, upn: str, enabled: bool) -> None:
        self.user(upn)["accountEnabled"] = enabled

    def remove_user(self, upn: str) -> dict[str, Any] | None:
        """Delete a user (it leaves /users; add a "Delete user" audit with ``add_audit``)."""
        with self._lock:
            user = self.user(upn)
            if user is not None:
                del self._users[user["id"]]
            return user

    def add_audit(self, activity: str, at: dt.datetime | str, target_upn: str | None, *,
                  actor: str | None = "admin@corp.example", actor_app: str | None = None,
                  modified: dict[str, tuple[Any, Any]] | None = None, result: str = "success",
                  target_id: str | None = None, group: str | None = None,
                  role: str | None = None, category: str | None = None,
                  id: str | None = None) -> dict[str, Any]:
        """A directoryAudit as Graph returns it.

        ``modified`` maps a property to ``(old, new)``: ``{"AccountEnabled": (True, False)}``
        becomes ``modifiedProperties`` ``oldValue "[true]"``, ``newValue "[false]"`` on the user
        target (Graph's encoding). For "Delete user" and "Hard delete user" the target's
        ``userPrincipalName`` is Graph's renamed form ``<object id without dashes><upn>``.
        ``group`` / ``role`` add a Group / Role target (membership activities).
        """
        at = _utc(at)
        known = self.user(target_upn) if target_upn else None
        target_id = target_id or (known["id"] if known else
                                  str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                 f"{self.tenant_id}/{(target_upn or '').lower()}")))
        upn = target_upn
        if target_upn and activity in ("Delete user", "Hard delete user"):
            upn = target_id.replace("-", "") + target_upn
        properties = []
        for name, (old, new) in (modified or {}).items():
            properties.append({"displayName": name, "oldValue": json.dumps([old]),
                               "newValue": json.dumps([new])})
        if properties:
            properties.append({"displayName": "Included Updated Properties", "oldValue": None,
                               "newValue": json.dumps(", ".join(modified))})
        targets = []
        if target_upn is not None:
            targets.append({"id": target_id, "displayName": None, "type": "User",
                            "userPrincipalName": upn, "groupType": None,
                            "modifiedProperties": properties})
        if group:
            targets.append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "group/" + group)),
                            "displayName": group, "type": "Group", "userPrincipalName": None,
                            "groupType": "unifiedGroups", "modifiedProperties": []})
        if role:
            targets.append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "role/" + role)),
                            "displayName": role, "type": "Role", "userPrincipalName": None,
                            "groupType": None, "modifiedProperties": []})
        initiated: dict[str, Any] = {"app": None, "user": None}
        if actor_app:
            initiated["app"] = {"appId": None, "displayName": actor_app,
                                "servicePrincipalId": str(uuid.uuid4()),
                                "servicePrincipalName": None}
        elif actor:
            initiated["user"] = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, actor)),
                                 "displayName": None, "userPrincipalName": actor,
                                 "ipAddress": "198.51.100.7", "userType": None,
                                 "homeTenantId": None, "homeTenantName": None}
        if category is None:
            category = ("RoleManagement" if "role" in activity.lower() else
                        "GroupManagement" if "group" in activity.lower() else "UserManagement")
        record = {
            "id": id or f"Directory_{uuid.uuid4()}_{secrets.token_hex(3).upper()}_{secrets.randbelow(10**8)}",
            "category": category, "correlationId": str(uuid.uuid4()), "result": result,
            "resultReason": "", "activityDisplayName": activity,
            "activityDateTime": _iso(at), "loggedByService": "Core Directory",
            "operationType": activity.split(" ")[0].replace("Hard", "Delete"),
            "initiatedBy": initiated, "targetResources": targets, "additionalDetails": [],
            "_at": at,
        }
        with self._lock:
            self._audits.append(record)
        return self._public(record)

    def add_sign_in(self, upn: str, at: dt.datetime | str, error_code: int = 0, *,
                    user_id: str | None = None, app: str = "Office 365 Exchange Online",
                    ip: str = "203.0.113.10", failure_reason: str | None = None,
                    id: str | None = None) -> dict[str, Any]:
        """An (interactive) sign-in log entry; ``error_code`` 0 is a success."""
        at = _utc(at)
        known = self.user(upn)
        user_id = user_id or (known["id"] if known else
                              str(uuid.uuid5(uuid.NAMESPACE_URL,
                                             f"{self.tenant_id}/{upn.lower()}")))
        record = {
            "id": id or str(uuid.uuid4()), "createdDateTime": _iso(at),
            "userDisplayName": known["displayName"] if known else upn.split("@")[0],
            "userPrincipalName": upn, "userId": user_id, "appId": str(uuid.uuid4()),
            "appDisplayName": app, "ipAddress": ip, "clientAppUsed": "Browser",
            "correlationId": str(uuid.uuid4()), "conditionalAccessStatus": "notApplied",
            "isInteractive": True, "riskDetail": "none", "riskLevelAggregated": "none",
            "riskLevelDuringSignIn": "none", "riskState": "none", "riskEventTypes_v2": [],
            "resourceDisplayName": "Microsoft Graph", "resourceId": str(uuid.uuid4()),
            "status": {"errorCode": error_code,
                       "failureReason": failure_reason or (None if error_code == 0 else
                                                           "Invalid username or password."),
                       "additionalDetails": None},
            "deviceDetail": {"deviceId": "", "displayName": None, "operatingSystem": "Windows10",
                             "browser": "Edge 120.0.0", "isCompliant": None, "isManaged": None,
                             "trustType": None},
            "location": {"city": "Redmond", "state": "Washington", "countryOrRegion": "US"},
            "appliedConditionalAccessPolicies": [],
            "_at": at,
        }
        with self._lock:
            self._sign_ins.append(record)
        return self._public(record)

    def register_certificate(self, cert_pem: str | bytes) -> None:
        """Register a certificate credential on the app (as uploaded in the app registration)."""
        cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str)
                                              else cert_pem)
        with self._lock:
            for algorithm in (hashes.SHA256(), hashes.SHA1()):
                self._certificates[_b64(cert.fingerprint(algorithm))] = cert.public_key()

    # --- faults -------------------------------------------------------------------------------
    def throttle_next(self, n: int = 1, *, retry_after: int | None = 1,
                      path: str = "/v1.0/") -> None:
        """The next ``n`` requests whose path starts with ``path`` (``"token"``: the token
        endpoint) get 429 + ``Retry-After``."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self._queue(n, path, 429, "TooManyRequests",
                    "Too many requests. Please retry after the period in Retry-After.", headers)

    def fail_next(self, n: int = 1, *, status: int = 503, path: str = "/v1.0/",
                  code: str = "ServiceUnavailable", message: str = "Service unavailable",
                  retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self._queue(n, path, status, code, message, headers)

    def _queue(self, n, path, status, code, message, headers) -> None:
        with self._lock:
            self._faults.extend([(path, status, code, message, headers)] * n)

    def next_link_base(self, base: str | None) -> None:
        """Hand out ``@odata.nextLink`` URLs on ``base`` (e.g. another host) instead of ours."""
        with self._lock:
            self._next_link_base = base.rstrip("/") if base else None

    def repeat_next_link(self, enabled: bool = True) -> None:
        """Simulate a paging bug: every page after the first carries the same nextLink."""
        with self._lock:
            self._repeat_next_link = enabled

    def revoke_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        with self._lock:
            self._tokens.clear()

    def reset(self) -> None:
        """Forget users, logs, tokens, faults, registered certificates (but the one given to the
        constructor) and the request log; the tenant is premium again and the app has both
        application permissions."""
        with self._lock:
            self._users.clear()
            self._audits.clear()
            self._sign_ins.clear()
            self._tokens.clear()
            self._skiptokens.clear()
            self._faults.clear()
            self._next_link_base = None
            self._repeat_next_link = False
            self.premium = True
            self.permissions = {USER_PERMISSION, AUDIT_PERMISSION}
            self.requests.clear()
            self._certificates.clear()
        if self._initial_certificate:
            self.register_certificate(self._initial_certificate)

    # --- request log helpers ------------------------------------------------------------------
    def token_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/oauth2/v2.0/token")]

    def graph_requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """Graph requests, optionally only those to ``path`` (e.g. ``/v1.0/users``)."""
        return [r for r in self.requests if r["path"].startswith("/v1.0/")
                and (path is None or r["path"] == path)]

    # --- server -------------------------------------------------------------------------------
    @property
    def authority_host(self) -> str:
        return self.url

    @property
    def graph_url(self) -> str:
        return self.url

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/{self.tenant_id}/oauth2/v2.0/token"

    def start(self) -> "GraphEmulator":
        import trustme   # a test dependency; imported here so that seeding helpers need it not

        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        directory = self._ca_dir
        if directory is None:
            directory = self._own_ca_dir = Path(tempfile.mkdtemp(prefix="graph-emulator-"))
        directory.mkdir(parents=True, exist_ok=True)
        ca_file = directory / "graph-emulator-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        self.ca_path = str(ca_file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(context)
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                # The TLS handshake happens here, in the request thread, not in accept().
                try:
                    self.request.do_handshake()
                except (ssl.SSLError, OSError):
                    self.request.close()
                    raise
                super().setup()

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = emulator._handle(method, self.path, self.headers,
                                                            body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", str(uuid.uuid4()))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - http.server naming
                self._serve("GET")

            def do_POST(self):  # noqa: N802
                self._serve("POST")

            def log_message(self, *args):  # keep test output quiet
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, address = self.socket.accept()
                return context.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False), address

            def handle_error(self, request, client_address):
                pass      # a client that gives up on TLS is not our error

        return self._serve(Handler, name="graph-emulator", server_class=Server, scheme="https")

    def stop(self) -> None:
        super().stop()
        if self._own_ca_dir is not None:
            shutil.rmtree(self._own_ca_dir, ignore_errors=True)
            self._own_ca_dir = None

    # --- protocol -----------------------------------------------------------------------------
    def _handle(self, method: str, target: str, headers, body: bytes
                ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(target)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        entry: dict[str, Any] = {"method": method, "path": path, "query": query,
                                 "raw_query": parts.query, "status": 200, "error": None,
                                 "authorization": bool(headers.get("Authorization")),
                                 "at": time.monotonic()}
        with self._lock:
            self.requests.append(entry)
        try:
            if method == "POST" and path.endswith("/oauth2/v2.0/token"):
                form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
                # never keep credentials in the log
                entry["form"] = {k: v for k, v in form.items()
                                 if k not in ("client_secret", "client_assertion")}
                entry["credential"] = ("secret" if "client_secret" in form else
                                       "assertion" if "client_assertion" in form else None)
                self._fault(path)
                return 200, {}, self._token(path, form)
            if method == "GET" and path.endswith("/v2.0/.well-known/openid-configuration"):
                return 200, {}, self._discovery(path)
            if path.startswith("/v1.0/"):
                self._fault(path)
                self._authenticate(headers)
                if method != "GET":
                    raise _GraphError(405, "Request_BadRequest", "Method not allowed")
                if path == "/v1.0/users":
                    return 200, {}, self._list_users(query, parts.query)
                if path == "/v1.0/auditLogs/directoryAudits":
                    return 200, {}, self._list_log(path, query, parts.query, "directoryAudit")
                if path == "/v1.0/auditLogs/signIns":
                    return 200, {}, self._list_log(path, query, parts.query, "signIn")
            raise _GraphError(404, "Request_ResourceNotFound",
                              f"Resource not found for the segment '{path}'.")
        except _TokenError as err:
            entry["status"], entry["error"] = err.status, err.error
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            return err.status, {}, {
                "error": err.error,
                "error_description": f"AADSTS{err.code}: {err.description} "
                                     f"Trace ID: {uuid.uuid4()} Correlation ID: "
                                     f"{uuid.uuid4()} Timestamp: {now}",
                "error_codes": [err.code], "timestamp": now, "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
                "error_uri": f"{self.url}/error?code={err.code}"}
        except _GraphError as err:
            entry["status"], entry["error"] = err.status, err.code
            return err.status, err.headers, {"error": {
                "code": err.code, "message": err.message,
                "innerError": {"date": _iso(dt.datetime.now(dt.timezone.utc).replace(
                    microsecond=0)), "request-id": str(uuid.uuid4()),
                    "client-request-id": str(uuid.uuid4())}}}

    def _fault(self, path: str) -> None:
        with self._lock:
            for index, (prefix, status, code, message, headers) in enumerate(self._faults):
                if path.startswith(prefix) or (prefix == "token" and path.endswith("/token")):
                    del self._faults[index]
                    raise _GraphError(status, code, message, headers)

    # --- identity platform --------------------------------------------------------------------
    def _tenant(self, path: str) -> str:
        tenant = path.strip("/").split("/", 1)[0]
        if tenant.lower() != self.tenant_id.lower() and tenant.lower() != self.domain.lower():
            raise _TokenError(400, "invalid_tenant", 90002,
                              f"Tenant '{tenant}' not found. Check to make sure you have the "
                              "correct tenant ID and are signing into the correct cloud.")
        return tenant

    def _discovery(self, path: str) -> dict[str, Any]:
        tenant = self._tenant(path)
        base = f"{self.url}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{self.url}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.url}/{self.tenant_id}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True, "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid"],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU", "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net", "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    def _token(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        self._tenant(path)
        if form.get("grant_type") != "client_credentials":
            raise _TokenError(400, "unsupported_grant_type", 70003,
                              "The app requested an unsupported grant type "
                              f"'{form.get('grant_type')}'.")
        client_id = form.get("client_id")
        if client_id != self.client_id:
            raise _TokenError(400, "unauthorized_client", 700016,
                              f"Application with identifier '{client_id}' was not found in the "
                              f"directory '{self.tenant_id}'. This can happen if the "
                              "application has not been installed by the administrator of the "
                              "tenant or consented to by any user in the tenant.")
        if form.get("client_assertion"):
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise _TokenError(400, "invalid_request", 50027,
                                  "Invalid client_assertion_type.")
            self._verify_assertion(form["client_assertion"], path)
        elif "client_secret" in form:
            if self.client_secret is None or not secrets.compare_digest(
                    form["client_secret"], self.client_secret):
                raise _TokenError(401, "invalid_client", 7000215,
                                  "Invalid client secret provided. Ensure the secret being sent "
                                  "in the request is the client secret value, not the client "
                                  f"secret ID, for a secret added to app '{self.client_id}'.")
        else:
            raise _TokenError(401, "invalid_client", 7000218,
                              "The request body must contain the following parameter: "
                              "'client_assertion' or 'client_secret'.")
        scope = form.get("scope", "")
        if set(scope.split()) - {"openid", "profile", "offline_access"} != \
                {f"{self.url}/.default"}:
            raise _TokenError(400, "invalid_scope", 1002012,
                              f"The provided value for scope {scope} is not valid. Client "
                              "credential flows must have a scope value with /.default suffixed "
                              "to the resource identifier (application ID URI).")
        now = int(time.time())
        token = jwt.encode({
            "aud": self.url, "iss": f"https://sts.windows.net/{self.tenant_id}/", "iat": now,
            "nbf": now, "exp": now + 3599, "tid": self.tenant_id, "appid": self.client_id,
            "app_displayname": self.app_name, "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, "sp/" + self.client_id)),
            "roles": sorted(self.permissions), "jti": secrets.token_hex(8)},
            self._signing_key, algorithm="HS256")
        with self._lock:
            self._tokens[token] = now + 3599
        return {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                "access_token": token}

    def _verify_assertion(self, assertion: str, path: str) -> None:
        def refuse(why: str):
            raise _TokenError(401, "invalid_client", 700027,
                              f"The certificate with identifier used to sign the client "
                              f"assertion is not registered on application or the signature is "
                              f"invalid. [Reason - {why}]")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            refuse("The client assertion is not a JWT.")
        thumbprint = str(header.get("x5t#S256") or header.get("x5t") or "").rstrip("=")
        with self._lock:
            key = self._certificates.get(thumbprint)
        if key is None:
            refuse("The key was not found.")
        audience = f"{self.url}{path}"
        try:
            claims = jwt.decode(assertion, key, algorithms=["PS256", "RS256"],
                                audience=audience, issuer=self.client_id,
                                options={"require": ["exp", "aud", "iss", "sub", "jti"]})
        except jwt.PyJWTError as exc:
            refuse(f"Client assertion failed signature validation: {exc}.")
        if claims.get("sub") != self.client_id:
            refuse("The subject of the client assertion is not the application.")

    # --- graph --------------------------------------------------------------------------------
    def _authenticate(self, headers) -> None:
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        with self._lock:
            expiry = self._tokens.get(auth[7:])
        if expiry is None or expiry < time.time():
            raise _GraphError(401, "InvalidAuthenticationToken",
                              "Access token validation failure. Invalid audience.")

    def _require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise _GraphError(403, "Authorization_RequestDenied",
                              "Insufficient privileges to complete the operation.")

    def _top(self, query: dict[str, str], maximum: int, default: int) -> int:
        if "$top" not in query:
            return default
        try:
            top = int(query["$top"])
        except ValueError:
            raise _GraphError(400, "Request_BadRequest",
                              f"Invalid value '{query['$top']}' for $top.") from None
        if not 1 <= top <= maximum:
            raise _GraphError(400, "Request_UnsupportedQuery",
                              f"Invalid page size specified: '{top}'. Must be between 1 and "
                              f"{maximum} inclusive.")
        return top

    def _page(self, path: str, raw_query: str, query: dict[str, str], records: list,
              top: int) -> tuple[list, str | None]:
        """Slice ``records`` by ``$skiptoken``; the next link repeats the query (as Graph's)."""
        fingerprint = path + "?" + "&".join(sorted(p for p in raw_query.split("&")
                                                   if not p.startswith(("$skiptoken=",
                                                                        "%24skiptoken="))))
        offset = 0
        token = query.get("$skiptoken")
        with self._lock:
            if token is not None:
                known = self._skiptokens.get(token)
                if known is None or known[0] != fingerprint:
                    raise _GraphError(400, "Request_BadRequest",
                                      "The specified page token value has expired or is invalid.")
                offset = known[1]
            page = records[offset:offset + top]
            link = None
            if offset + top < len(records):
                new = "repeated" if self._repeat_next_link and token is not None \
                    else secrets.token_urlsafe(24)
                if new == "repeated":
                    self._skiptokens[new] = (fingerprint, offset)
                else:
                    self._skiptokens[new] = (fingerprint, offset + top)
                kept = "&".join(p for p in raw_query.split("&")
                                if p and not p.startswith(("$skiptoken=", "%24skiptoken=")))
                base = self._next_link_base or self.url
                link = f"{base}{path}?{kept}{'&' if kept else ''}$skiptoken={quote(new)}"
        return page, link

    def _list_users(self, query: dict[str, str], raw_query: str) -> dict[str, Any]:
        self._require(USER_PERMISSION)
        select = [f for f in query.get("$select", "").split(",") if f] or \
            list(DEFAULT_USER_FIELDS)
        unknown = [f for f in select if f not in USER_FIELDS]
        if unknown:
            raise _GraphError(400, "Request_BadRequest",
                              f"Could not find a property named '{unknown[0]}' on type "
                              "'Microsoft.DirectoryServices.User'.")
        activity = "signInActivity" in select
        if activity:
            if not self.premium:
                raise _GraphError(403, NON_PREMIUM,
                                  "Neither tenant is B2C or tenant doesn't have premium license")
            self._require(AUDIT_PERMISSION)
        top = self._top(query, MAX_TOP_WITH_SIGN_IN_ACTIVITY if activity else MAX_TOP, 100)
        for key in query:
            if key not in ("$select", "$top", "$skiptoken"):
                raise _GraphError(400, "Request_UnsupportedQuery",
                                  f"Unsupported query parameter '{key}' for this emulator.")
        with self._lock:
            users = list(self._users.values())
        page, link = self._page("/v1.0/users", raw_query, query, users, top)
        value = []
        for user in page:
            item = {}
            for field in select:
                if field == "signInActivity" and user.get("signInActivity") is None:
                    continue      # never signed in: Graph leaves the property out
                item[field] = user.get(field)
            value.append(item)
        body: dict[str, Any] = {"@odata.context": f"{self.url}/v1.0/$metadata#users"
                                                  f"({','.join(select)})", "value": value}
        if link:
            body["@odata.nextLink"] = link
        return body

    def _list_log(self, path: str, query: dict[str, str], raw_query: str,
                  kind: str) -> dict[str, Any]:
        self._require(AUDIT_PERMISSION)
        if kind == "signIn" and not self.premium:
            raise _GraphError(403, NON_PREMIUM,
                              "Neither tenant is B2C or tenant doesn't have premium license")
        fields = _AUDIT_FIELDS if kind == "directoryAudit" else _SIGN_IN_FIELDS
        predicate: Callable[[dict], bool] = lambda record: True
        if query.get("$filter"):
            try:
                predicate = parse_filter(query["$filter"], fields)
            except ValueError as exc:
                raise _GraphError(400, "Request_UnsupportedQuery",
                                  f"Invalid filter clause: {exc}") from None
        top = self._top(query, MAX_TOP, self.log_page_size)
        for key in query:
            if key not in ("$filter", "$top", "$skiptoken"):
                raise _GraphError(400, "Request_UnsupportedQuery",
                                  f"Unsupported query parameter '{key}' for this emulator.")
        with self._lock:
            records = list(self._audits if kind == "directoryAudit" else self._sign_ins)
        matches = sorted((r for r in records if predicate(r)),
                         key=lambda r: (r["_at"], r["id"]), reverse=True)
        page, link = self._page(path, raw_query, query, matches, top)
        body: dict[str, Any] = {
            "@odata.context": f"{self.url}/v1.0/$metadata#auditLogs/"
                              f"{'directoryAudits' if kind == 'directoryAudit' else 'signIns'}",
            "value": [self._public(r) for r in page]}
        if link:
            body["@odata.nextLink"] = link
        return body

    @staticmethod
    def _public(record: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps({k: v for k, v in record.items() if not k.startswith("_")}))
