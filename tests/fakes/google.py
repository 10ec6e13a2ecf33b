"""A local emulator of the Google Workspace APIs that the ``google_workspace`` integration calls.

It speaks the documented wire protocol over real HTTP on 127.0.0.1 (ephemeral port), so the real
google-auth and google-api-python-client run against it unchanged:

- OAuth 2.0 token endpoint (``POST /token``) for the JWT-bearer grant
  (``urn:ietf:params:oauth:grant-type:jwt-bearer``): the RS256 assertion is verified against the
  registered public keys of the service account; ``aud``, ``iat``/``exp`` and ``scope`` are
  checked; a ``sub`` (domain-wide delegation) must be a user of the customer, and every requested
  scope must be granted to the service account's client ID — refused as Google refuses it
  (``invalid_grant`` / ``unauthorized_client``).
- Directory ``GET /admin/directory/v1/users`` (``customer`` or ``domain``, ``maxResults`` ≤ 500,
  ``pageToken``, ``fields`` partial responses, ``projection``).
- Reports ``GET /admin/reports/v1/activity/users/{userKey}/applications/{admin|login}``
  (``eventName``, ``startTime``/``endTime`` RFC 3339, ``maxResults`` ≤ 1000, ``pageToken``,
  ``customerId``), newest first, at most 180 days back.
- IAM Credentials ``POST /v1/projects/-/serviceAccounts/{email}:signBlob``, for keyless
  domain-wide delegation from application-default credentials.

Bearer tokens are checked on every API call: 401 for a missing, unknown or expired token, 403 for
a token without the method's scope (``ACCESS_TOKEN_SCOPE_INSUFFICIENT``) and 403 ``Not Authorized
to access this resource/api`` for a principal without the admin privilege. Faults:
``throttle_next(n)`` (429 + ``Retry-After``), ``fail_next(n, status)``, ``repeat_next_token()``.
Every request is kept in ``requests`` so tests can count calls. Use it with the real clients::

    with GoogleEmulator(customer_id="C0test01", admin="admin@corp.example") as google:
        key = google.write_key(tmp_path / "sa.json")     # a throwaway RSA key, registered
        google.add_user("ann@corp.example", name="Ann Example", aliases=["a@corp.example"])
        google.add_activity("admin", "CREATE_USER", at, "ann@corp.example")
        # build("admin", "directory_v1", client_options={"api_endpoint": google.url}, ...)
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ._server import JsonHandler, LocalServer

DIRECTORY_SCOPE = "https://www.googleapis.com/auth/admin.directory.user.readonly"
REPORTS_SCOPE = "https://www.googleapis.com/auth/admin.reports.audit.readonly"
IAM_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",
              "https://www.googleapis.com/auth/iam")
SCOPES = (DIRECTORY_SCOPE, REPORTS_SCOPE)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Audiences Google's token endpoint accepts in an assertion (google-auth always sends the first,
# whatever token_uri it posts to); the emulator also accepts its own token URI.
TOKEN_AUDIENCES = ("https://oauth2.googleapis.com/token",
                   "https://www.googleapis.com/oauth2/v4/token",
                   "https://accounts.google.com/o/oauth2/token")
NEVER = "1970-01-01T00:00:00.000Z"          # lastLoginTime of a user who never signed in
RETENTION_DAYS = 180

# Emulator-internal names of the two admin privileges the integration needs (in the Admin console:
# Admin API privileges › Users › Read, and Admin console privileges › Reports).
USERS_READ = "users.read"
REPORTS = "reports"
ALL_PRIVILEGES = frozenset({USERS_READ, REPORTS})

# Fields a Directory user resource may carry (a `fields` selection naming anything else is a 400).
USER_FIELDS = {
    "kind", "id", "etag", "primaryEmail", "name", "isAdmin", "isDelegatedAdmin", "lastLoginTime",
    "creationTime", "deletionTime", "agreedToTerms", "suspended", "suspensionReason", "archived",
    "changePasswordAtNextLogin", "ipWhitelisted", "emails", "aliases", "nonEditableAliases",
    "customerId", "orgUnitPath", "isMailboxSetup", "isEnrolledIn2Sv", "isEnforcedIn2Sv",
    "includeInGlobalAddressList", "externalIds", "relations", "organizations", "phones",
    "addresses", "languages", "thumbnailPhotoUrl", "thumbnailPhotoEtag", "recoveryEmail",
    "recoveryPhone", "customSchemas", "posixAccounts", "sshPublicKeys", "websites", "locations",
    "keywords", "gender", "notes", "ims", "hashFunction", "password", "isGuestUser",
}
NAME_FIELDS = {"givenName", "familyName", "fullName", "displayName"}

ADMIN_USER_EVENTS = {"CREATE_USER", "SUSPEND_USER", "UNSUSPEND_USER", "DELETE_USER",
                     "UNDELETE_USER", "ARCHIVE_USER", "UNARCHIVE_USER", "RENAME_USER",
                     "GRANT_ADMIN_PRIVILEGE", "REVOKE_ADMIN_PRIVILEGE", "CHANGE_PASSWORD"}
ADMIN_ROLE_EVENTS = {"ASSIGN_ROLE", "UNASSIGN_ROLE"}
APPLICATIONS = {"admin", "login"}
ALL_APPLICATIONS = APPLICATIONS | {"drive", "token", "groups", "saml", "mobile", "calendar",
                                   "user_accounts", "access_transparency", "chat", "meet",
                                   "gcp", "rules", "jamboard", "groups_enterprise"}

_NOT_AUTHORIZED = "Not Authorized to access this resource/api"


# --- small helpers ------------------------------------------------------------------------------

def _utc(at: dt.datetime | str) -> dt.datetime:
    if isinstance(at, str):
        at = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return at.astimezone(dt.timezone.utc)


def rfc3339(at: dt.datetime | str) -> str:
    """Google's timestamp format: ``2026-03-01T10:00:00.000Z``."""
    at = _utc(at)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digits(seed: str, n: int) -> str:
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    return str(10 ** (n - 1) + number % (9 * 10 ** (n - 1)))


def client_id_for(client_email: str) -> str:
    """The numeric OAuth client ID of a service account (what domain-wide delegation names)."""
    return _digits("client:" + client_email.lower(), 21)


def make_service_account_key(path: str | os.PathLike, client_email: str, token_uri: str, *,
                             project_id: str = "accessproof-test",
                             key_size: int = 2048) -> dict[str, Any]:
    """Write a throwaway service-account key JSON (Google's format) with a fresh RSA key to
    ``path`` (mode 0600) and return it as a dict. Register it with ``GoogleEmulator.add_key``."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": client_email,
        "client_id": client_id_for(client_email),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                + client_email.replace("@", "%40"),
        "universe_domain": "googleapis.com",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2)
    return info


def _public_key(key: Any):
    """A public key from a key dict (``private_key`` PEM), a private key or a public key."""
    if isinstance(key, dict):
        key = key["private_key"]
    if isinstance(key, (str, bytes)):
        data = key.encode() if isinstance(key, str) else key
        if b"PRIVATE KEY" in data:
            return serialization.load_pem_private_key(data, password=None).public_key()
        return serialization.load_pem_public_key(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.public_key()
    return key


class _Error(Exception):
    """An error answered in Google's JSON shape."""

    def __init__(self, status: int, message: str, reason: str, *, state: str | None = None,
                 headers: dict[str, str] | None = None, details: list | None = None):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason
        self.state = state or {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED",
                               403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                               429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                               503: "UNAVAILABLE"}.get(status, "UNKNOWN")
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.status, "message": self.message,
            "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            "status": self.state}
        if self.status == 401:
            error["errors"][0].update(location="Authorization", locationType="header")
        if self.details:
            error["details"] = self.details
        return {"error": error}


class _OAuthError(Exception):
    """A token-endpoint refusal: ``{"error": ..., "error_description": ...}``."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


# --- fields selector (partial responses) --------------------------------------------------------

def parse_fields(text: str) -> dict[str, dict]:
    """Parse a ``fields`` selector (``nextPageToken,users(id,name/fullName)``) into a tree; an
    empty subtree means the whole value."""
    pos = 0

    def parse_list(end: str | None) -> dict[str, dict]:
        nonlocal pos
        tree: dict[str, dict] = {}
        while True:
            match = re.compile(r"\s*([A-Za-z0-9_*]+(?:/[A-Za-z0-9_*]+)*)\s*").match(text, pos)
            if not match:
                raise ValueError(f"Invalid field selection {text[pos:pos + 20]!r}")
            pos = match.end()
            names = match.group(1).split("/")
            sub: dict[str, dict] = {}
            if pos < len(text) and text[pos] == "(":
                pos += 1
                sub = parse_list(")")
                if pos >= len(text) or text[pos] != ")":
                    raise ValueError("Invalid field selection: unbalanced parentheses")
                pos += 1
            node = tree
            for name in names[:-1]:
                node = node.setdefault(name, {})
            node[names[-1]] = _merge(node.get(names[-1], {}), sub) if names[-1] in node else sub
            while pos < len(text) and text[pos] == " ":
                pos += 1
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            if end is None and pos < len(text):
                raise ValueError(f"Invalid field selection {text[pos:]!r}")
            return tree

    return parse_list(None)


def _merge(a: dict, b: dict) -> dict:
    if not a or not b:
        return {}
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if key in out else value
    return out


def apply_fields(value: Any, tree: dict[str, dict]) -> Any:
    if not tree:
        return value
    if isinstance(value, list):
        return [apply_fields(v, tree) for v in value]
    if isinstance(value, dict):
        return {k: apply_fields(value[k], sub) for k, sub in tree.items() if k in value}
    return value


def _check_user_fields(tree: dict[str, dict]) -> None:
    for key, sub in tree.items():
        if key in ("kind", "etag", "nextPageToken", "trigger_event"):
            continue
        if key != "users":
            raise _Error(400, f"Invalid field selection {key}", "invalidParameter")
        for field, inner in sub.items():
            if field not in USER_FIELDS:
                raise _Error(400, f"Invalid field selection {field}", "invalidParameter")
            if field == "name":
                for part in inner:
                    if part not in NAME_FIELDS:
                        raise _Error(400, f"Invalid field selection name/{part}",
                                     "invalidParameter")


# --- the emulator -------------------------------------------------------------------------------

class GoogleEmulator(LocalServer):
    """Google's token endpoint, Directory users.list and Reports activities.list on 127.0.0.1.

    ``customer_id`` is the account's customer ID (``my_customer`` resolves to it), ``admin`` the
    super admin the service account acts as (added as a user), ``service_account`` the service
    account's email; domain-wide delegation grants ``scopes`` to its client ID. ``now`` fixes the
    clock of the Reports API's 180-day limit (tokens always use the real clock).
    """

    def __init__(self, *, customer_id: str = "C03az79cb", admin: str = "admin@corp.example",
                 service_account: str = "accessproof@accessproof-test.iam.gserviceaccount.com",
                 scopes: Iterable[str] = SCOPES, domains: Iterable[str] | None = None,
                 now: dt.datetime | None = None):
        self.customer_id = customer_id
        self.admin = admin
        self.service_account = service_account
        self.now = _utc(now) if now is not None else None
        self._lock = threading.RLock()
        self._users: dict[str, dict[str, Any]] = {}         # id → user resource
        self._privileges: dict[str, frozenset[str]] = {}    # user id → admin privileges
        self._activities: list[dict[str, Any]] = []
        self._keys: dict[str, dict[str, Any]] = {}          # client email → {kid: public key}
        self._managed: dict[str, rsa.RSAPrivateKey] = {}    # Google-managed keys (signBlob)
        self._delegation: dict[str, frozenset[str]] = {}    # client ID → delegated scopes
        self._sa_privileges: dict[str, frozenset[str]] = {}  # admin roles held by accounts
        self._token_creators: set[str] = set()
        self._tokens: dict[str, dict[str, Any]] = {}
        self._page_tokens: dict[str, tuple[str, int]] = {}
        self._faults: list[_Error] = []
        self._repeat_tokens = False
        self._expire_after: int | None = None
        self._reject_all = False
        self._domains = set(domains or ())
        self.requests: list[dict[str, Any]] = []
        self.delegate(client_id_for(service_account), scopes)
        self._token_creators.add(service_account)
        if admin:
            self.add_user(admin, name="Workspace Admin", is_admin=True)

    # --- seeding ------------------------------------------------------------------------------
    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def add_user(self, primary_email: str, *, name: str | None = None,
                 aliases: Iterable[str] = (), non_editable_aliases: Iterable[str] = (),
                 suspended: bool = False, archived: bool = False, is_admin: bool = False,
                 is_delegated_admin: bool = False, privileges: Iterable[str] | None = None,
                 created: dt.datetime | str | None = None,
                 last_login: dt.datetime | str | None = None, org_unit: str = "/",
                 user_id: str | None = None, customer_id: str | None = None,
                 suspension_reason: str = "ADMIN") -> dict[str, Any]:
        """Add a user; ``last_login=None`` means never signed in (Google's 1970 value).
        A delegated admin gets ``privileges`` (default both ``USERS_READ`` and ``REPORTS``);
        a super admin (``is_admin``) has every privilege. Returns the user resource."""
        full = name or primary_email.split("@")[0].replace(".", " ").title()
        given, _, family = full.partition(" ")
        user_id = user_id or _digits("user:" + primary_email.lower(), 21)
        emails = [{"address": primary_email, "primary": True}] + \
            [{"address": a} for a in aliases]
        user: dict[str, Any] = {
            "kind": "admin#directory#user",
            "id": user_id,
            "etag": f"\"{secrets.token_urlsafe(12)}\"",
            "primaryEmail": primary_email,
            "name": {"givenName": given, "familyName": family or given, "fullName": full},
            "isAdmin": is_admin,
            "isDelegatedAdmin": is_delegated_admin,
            "lastLoginTime": NEVER if last_login is None else rfc3339(last_login),
            "creationTime": rfc3339(created or dt.datetime(2024, 1, 2, 9, 0,
                                                           tzinfo=dt.timezone.utc)),
            "agreedToTerms": last_login is not None,
            "suspended": suspended,
            "archived": archived,
            "changePasswordAtNextLogin": False,
            "ipWhitelisted": False,
            "emails": emails,
            "customerId": customer_id or self.customer_id,
            "orgUnitPath": org_unit,
            "isMailboxSetup": True,
            "isEnrolledIn2Sv": False,
            "isEnforcedIn2Sv": False,
            "includeInGlobalAddressList": True,
            # Like Google: the recovery details are there unless a `fields` selection drops them
            "recoveryEmail": f"{primary_email.split('@')[0]}@personal.example",
        }
        if suspended:
            user["suspensionReason"] = suspension_reason
        if aliases:
            user["aliases"] = list(aliases)
        if non_editable_aliases:
            user["nonEditableAliases"] = list(non_editable_aliases)
        with self._lock:
            self._users[user_id] = user
            if is_admin:
                self._privileges[user_id] = ALL_PRIVILEGES
            elif is_delegated_admin:
                self._privileges[user_id] = frozenset(ALL_PRIVILEGES if privileges is None
                                                      else privileges)
            self._domains.add(primary_email.split("@", 1)[1].lower())
        return user

    def add_users(self, count: int, *, domain: str = "corp.example", prefix: str = "user",
                  **kwargs: Any) -> list[dict[str, Any]]:
        """``count`` users ``<prefix>0000@<domain>`` onwards."""
        return [self.add_user(f"{prefix}{i:04d}@{domain}", **kwargs) for i in range(count)]

    def delete_user(self, email: str) -> None:
        """Remove a user from the directory (as DELETE_USER does; add the activity yourself)."""
        with self._lock:
            user = self._find_user(email)
            if user is None:
                raise KeyError(email)
            del self._users[user["id"]]
            self._privileges.pop(user["id"], None)

    def user(self, email: str) -> dict[str, Any] | None:
        with self._lock:
            return self._find_user(email)

    def _find_user(self, email: str) -> dict[str, Any] | None:
        key = email.strip().lower()
        for user in self._users.values():
            if user["primaryEmail"].lower() == key or key in (a.lower() for a in
                                                              user.get("aliases", [])):
                return user
        return None

    def add_activity(self, application: str, name: str, at: dt.datetime | str,
                     user_email: str | None = None, *, actor: str | None = None,
                     event_type: str | None = None,
                     parameters: dict[str, Any] | None = None, ip_address: str = "203.0.113.9",
                     unique_qualifier: str | None = None) -> dict[str, Any]:
        """Add an audit activity with one event. ``admin`` events name their target in the
        ``USER_EMAIL`` parameter and are done by ``actor`` (default: the admin); ``login`` events
        are done by the signing-in user (``user_email``). Returns the activity resource."""
        if application not in ALL_APPLICATIONS:
            raise ValueError(f"unknown application {application!r}")
        when = rfc3339(at)
        params: list[dict[str, Any]] = []
        if application == "admin":
            actor = actor or self.admin
            event_type = event_type or ("DELEGATED_ADMIN_SETTINGS" if name in ADMIN_ROLE_EVENTS
                                        else "USER_SETTINGS")
            values = {"USER_EMAIL": user_email} if user_email else {}
            if name in ADMIN_ROLE_EVENTS:
                values.setdefault("ROLE_NAME", "_USER_MANAGEMENT_ADMIN_ROLE")
            values.update(parameters or {})
        elif application == "login":
            actor = actor or user_email
            event_type = event_type or "login"
            values = {"login_type": "google_password"}
            if name == "login_failure":
                values["login_failure_type"] = "login_failure_invalid_password"
            values.update(parameters or {})
        else:
            actor = actor or user_email or self.admin
            event_type = event_type or application
            values = dict(parameters or {})
        for key, value in values.items():
            if isinstance(value, bool):
                params.append({"name": key, "boolValue": value})
            elif isinstance(value, int):
                params.append({"name": key, "intValue": str(value)})
            elif isinstance(value, (list, tuple)):
                params.append({"name": key, "multiValue": [str(v) for v in value]})
            else:
                params.append({"name": key, "value": str(value)})
        if application == "login":
            params.append({"name": "is_suspicious", "boolValue": False})
        with self._lock:
            actor_user = self._find_user(actor) if actor else None
        activity = {
            "kind": "admin#reports#activity",
            "id": {"time": when,
                   "uniqueQualifier": unique_qualifier or str(-int(_digits(
                       f"{application}|{name}|{when}|{user_email}|{len(self._activities)}",
                       18))),
                   "applicationName": application,
                   "customerId": self.customer_id},
            "etag": f"\"{secrets.token_urlsafe(16)}\"",
            "actor": {"callerType": "USER", "email": actor,
                      "profileId": actor_user["id"] if actor_user else _digits(
                          "profile:" + str(actor), 21)},
            "ipAddress": ip_address,
            "events": [{"type": event_type, "name": name, "parameters": params}],
        }
        with self._lock:
            self._activities.append(activity)
        return activity

    def add_raw_activity(self, activity: dict[str, Any]) -> None:
        """Add an activity resource as given (several events, unusual actors, ...)."""
        with self._lock:
            self._activities.append(activity)

    # --- credentials --------------------------------------------------------------------------
    def add_key(self, key: Any, *, client_email: str | None = None,
                key_id: str | None = None) -> None:
        """Register a public key of a service account (a key dict from
        ``make_service_account_key``, a PEM or a key object)."""
        email = client_email or (key.get("client_email") if isinstance(key, dict) else None) \
            or self.service_account
        kid = key_id or (key.get("private_key_id") if isinstance(key, dict) else None) \
            or secrets.token_hex(20)
        with self._lock:
            self._keys.setdefault(email, {})[kid] = _public_key(key)

    def remove_keys(self, client_email: str | None = None) -> None:
        """Delete every key of the service account (as after a key rotation)."""
        with self._lock:
            self._keys.pop(client_email or self.service_account, None)

    def write_key(self, path: str | os.PathLike, *, client_email: str | None = None,
                  register: bool = True) -> dict[str, Any]:
        """``make_service_account_key`` for this emulator's token URI, registered unless
        ``register`` is false (a key Google does not know)."""
        info = make_service_account_key(path, client_email or self.service_account,
                                        self.token_uri)
        if register:
            self.add_key(info)
        return info

    def delegate(self, client_id: str, scopes: Iterable[str]) -> None:
        """Domain-wide delegation: authorise ``client_id`` for ``scopes`` (replaces the list;
        an empty list removes the client)."""
        with self._lock:
            if scopes:
                self._delegation[client_id] = frozenset(scopes)
            else:
                self._delegation.pop(client_id, None)

    def grant_admin_role(self, principal: str, privileges: Iterable[str] = ALL_PRIVILEGES) -> None:
        """Assign an admin role to a service account itself (no delegation needed)."""
        with self._lock:
            self._sa_privileges[principal.lower()] = frozenset(privileges)

    def set_privileges(self, email: str, privileges: Iterable[str]) -> None:
        """Change the admin privileges of a user (e.g. a delegated admin without Reports)."""
        with self._lock:
            user = self._find_user(email)
            if user is None:
                raise KeyError(email)
            self._privileges[user["id"]] = frozenset(privileges)

    def mint_token(self, principal: str, scopes: Iterable[str] = IAM_SCOPES,
                   expires_in: int = 3600) -> str:
        """An access token as a metadata server / workload identity would hand one out."""
        token = "ya29.m." + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = {"iss": principal, "sub": None, "scopes": frozenset(scopes),
                                   "expires": time.time() + expires_in}
        return token

    def expire_tokens(self) -> None:
        """Every access token issued so far expires now (clients must fetch a new one)."""
        with self._lock:
            for info in self._tokens.values():
                info["expires"] = 0

    def expire_tokens_after(self, n: int) -> None:
        """After the next ``n`` API requests, every token issued so far expires."""
        with self._lock:
            self._expire_after = n

    def reject_tokens(self, enabled: bool = True) -> None:
        """Answer 401 to every API call whatever the token (as after the key is disabled)."""
        with self._lock:
            self._reject_all = enabled

    def token_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["api"] == "oauth2.token"]

    # --- faults -------------------------------------------------------------------------------
    def throttle_next(self, n: int, retry_after: int = 1) -> None:
        """The next ``n`` API requests get 429 with ``Retry-After`` (seconds)."""
        error = _Error(429, "Quota exceeded for quota metric 'Queries' and limit 'Queries per "
                            "minute per user' of service 'admin.googleapis.com'.",
                       "rateLimitExceeded", headers={"Retry-After": str(retry_after)})
        with self._lock:
            self._faults.extend([error] * n)

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next ``n`` API requests fail with ``status`` (default 503)."""
        message = {500: "Internal error encountered.", 502: "Bad Gateway",
                   503: "The service is currently unavailable.",
                   504: "Deadline exceeded."}.get(status, f"HTTP {status}")
        reason = "backendError" if status >= 500 else "failedPrecondition"
        with self._lock:
            self._faults.extend([_Error(status, message, reason)] * n)

    def repeat_next_token(self, enabled: bool = True) -> None:
        """Simulate a paging bug: every page after the first carries the same token."""
        with self._lock:
            self._repeat_tokens = enabled

    def reset(self) -> None:
        """Forget activities, tokens, faults and the request log (users and keys stay)."""
        with self._lock:
            self._activities.clear()
            self._tokens.clear()
            self._page_tokens.clear()
            self._faults.clear()
            self._repeat_tokens = False
            self._expire_after = None
            self._reject_all = False
            self.requests.clear()

    # --- request log --------------------------------------------------------------------------
    def api_requests(self, api: str | None = None) -> list[dict[str, Any]]:
        """Logged requests of ``api`` (``directory.users.list``, ``reports.activities.list``,
        ``oauth2.token``, ``iam.signBlob``); when None, the Directory and Reports calls."""
        wanted = (api,) if api else ("directory.users.list", "reports.activities.list")
        return [r for r in self.requests if r["api"] in wanted]

    # --- server -------------------------------------------------------------------------------
    def start(self) -> "GoogleEmulator":
        emulator = self

        class Handler(JsonHandler):
            content_type = "application/json; charset=UTF-8"

            def do_GET(self):  # noqa: N802 - http.server naming
                self.send_json(*emulator._handle("GET", self.path, self.headers, b""))

            def do_POST(self):  # noqa: N802
                self.send_json(*emulator._handle("POST", self.path, self.headers,
                                                 self.read_body()))

        return self._serve(Handler, name="google-emulator")

    # --- protocol -----------------------------------------------------------------------------
    def _handle(self, method: str, target: str, headers, raw: bytes
                ) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        path = unquote(parts.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        entry: dict[str, Any] = {"method": method, "path": path, "params": params, "api": None,
                                 "status": 200, "principal": None, "error": None}
        with self._lock:
            self.requests.append(entry)
        try:
            if method == "POST" and path == "/token":
                entry["api"] = "oauth2.token"
                return 200, self._token(headers, raw, entry), {"Cache-Control": "no-store"}
            match = re.fullmatch(r"/v1/projects/-/serviceAccounts/([^/:]+):signBlob", path)
            if method == "POST" and match:
                entry["api"] = "iam.signBlob"
                return 200, self._sign_blob(match.group(1), headers, raw, entry), {}
            if method == "GET" and path == "/admin/directory/v1/users":
                entry["api"] = "directory.users.list"
                self._fault()
                principal = self._authorize(headers, DIRECTORY_SCOPE, USERS_READ, entry)
                return 200, self._users_list(params, principal), {}
            match = re.fullmatch(r"/admin/reports/v1/activity/users/([^/]+)/applications/"
                                 r"([^/]+)", path)
            if method == "GET" and match:
                entry["api"] = "reports.activities.list"
                self._fault()
                principal = self._authorize(headers, REPORTS_SCOPE, REPORTS, entry)
                return 200, self._activities_list(match.group(1), match.group(2), params,
                                                  principal), {}
            raise _Error(404, f"The requested URL {path} was not found on this server.",
                         "notFound")
        except _OAuthError as err:
            entry["status"], entry["error"] = err.status, err.error
            return err.status, {"error": err.error, "error_description": err.description}, {}
        except _Error as err:
            entry["status"], entry["error"] = err.status, err.reason
            return err.status, err.body(), err.headers

    def _fault(self) -> None:
        with self._lock:
            if self._expire_after is not None:
                if self._expire_after <= 0:
                    for info in self._tokens.values():
                        info["expires"] = 0
                    self._expire_after = None
                else:
                    self._expire_after -= 1
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            raise fault

    def _clock(self) -> dt.datetime:
        return self.now or dt.datetime.now(dt.timezone.utc)

    # token endpoint ---------------------------------------------------------------------------
    def _token(self, headers, raw: bytes, entry: dict[str, Any]) -> dict[str, Any]:
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            raise _OAuthError(400, "invalid_request", "Invalid content type")
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != JWT_BEARER:
            raise _OAuthError(400, "unsupported_grant_type",
                              f"Invalid grant_type: {form.get('grant_type', '')}")
        assertion = form.get("assertion") or ""
        try:
            header_b64, payload_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(payload_b64))
            signature = _b64url_decode(signature_b64)
        except (ValueError, TypeError):
            raise _OAuthError(400, "invalid_grant", "Invalid JWT: not a signed JWT") from None
        entry["principal"] = claims.get("iss")
        with self._lock:
            keys = dict(self._keys.get(claims.get("iss"), {}))
        signed = f"{header_b64}.{payload_b64}".encode()
        if header.get("alg") != "RS256" or not any(
                _verifies(key, signature, signed) for key in keys.values()):
            raise _OAuthError(400, "invalid_grant", "Invalid JWT Signature.")
        if claims.get("aud") not in (*TOKEN_AUDIENCES, self.token_uri):
            raise _OAuthError(400, "invalid_grant",
                              f"Invalid JWT: Failed audience check. The right audience is "
                              f"{TOKEN_AUDIENCES[0]}")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)) \
                or exp <= now or iat > now + 300 or exp - iat > 3600:
            raise _OAuthError(400, "invalid_grant",
                              "Invalid JWT: Token must be a short-lived token (60 minutes) and "
                              "in a reasonable timeframe. Check your iat and exp values in the "
                              "JWT claim.")
        scopes = frozenset(str(claims.get("scope") or "").split())
        if not scopes:
            raise _OAuthError(400, "invalid_scope", "Empty or missing scope not allowed.")
        subject = claims.get("sub")
        if subject:
            with self._lock:
                user = self._find_user(subject)
                granted = self._delegation.get(client_id_for(claims["iss"]), frozenset())
            if user is None or user["primaryEmail"].lower() != subject.lower():
                raise _OAuthError(400, "invalid_grant", "Invalid email or User ID")
            if not scopes <= granted:
                raise _OAuthError(401, "unauthorized_client",
                                  "Client is unauthorized to retrieve access tokens using this "
                                  "method, or client not authorized for any of the scopes "
                                  "requested.")
        token = "ya29.c." + secrets.token_urlsafe(48)
        with self._lock:
            self._tokens[token] = {"iss": claims["iss"], "sub": subject, "scopes": scopes,
                                   "expires": now + 3600}
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def _bearer(self, headers) -> dict[str, Any]:
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            raise _Error(401, "Request is missing required authentication credential. Expected "
                              "OAuth 2 access token, login cookie or other valid authentication "
                              "credential.", "required")
        with self._lock:
            info = None if self._reject_all else self._tokens.get(auth[7:].strip())
        if info is None or info["expires"] <= time.time():
            raise _Error(401, "Request had invalid authentication credentials. Expected OAuth 2 "
                              "access token, login cookie or other valid authentication "
                              "credential.", "authError")
        return info

    def _authorize(self, headers, scope: str, privilege: str, entry: dict[str, Any]) -> str:
        info = self._bearer(headers)
        principal = info["sub"] or info["iss"]
        entry["principal"] = principal
        if scope not in info["scopes"]:
            raise _Error(403, "Request had insufficient authentication scopes.",
                         "insufficientPermissions", details=[{
                             "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                             "domain": "googleapis.com",
                             "metadata": {"service": "admin.googleapis.com"}}])
        with self._lock:
            if info["sub"]:
                user = self._find_user(info["sub"])
                held = self._privileges.get(user["id"], frozenset()) if user else frozenset()
                if user is not None and (user.get("suspended") or user.get("archived")):
                    held = frozenset()
            else:
                held = self._sa_privileges.get(principal.lower(), frozenset())
        if privilege not in held:
            raise _Error(403, _NOT_AUTHORIZED, "forbidden")
        return principal

    def _sign_blob(self, email: str, headers, raw: bytes, entry: dict[str, Any]
                   ) -> dict[str, Any]:
        info = self._bearer(headers)
        entry["principal"] = info["iss"]
        if not info["scopes"] & set(IAM_SCOPES):
            raise _Error(403, "Request had insufficient authentication scopes.",
                         "insufficientPermissions")
        with self._lock:
            allowed = info["iss"] == email and email in self._token_creators
        if not allowed:
            raise _Error(403, "Permission 'iam.serviceAccounts.signBlob' denied on resource "
                              "(or it may not exist).", "forbidden")
        try:
            payload = base64.b64decode(json.loads(raw)["payload"])
        except (ValueError, KeyError, TypeError):
            raise _Error(400, "Invalid JSON payload received.", "badRequest") from None
        with self._lock:
            key = self._managed.get(email)
            if key is None:
                key = self._managed[email] = rsa.generate_private_key(public_exponent=65537,
                                                                      key_size=2048)
                kid = _digits("managed:" + email, 20)
                self._keys.setdefault(email, {})[kid] = key.public_key()
        signature = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        return {"keyId": _digits("managed:" + email, 20),
                "signedBlob": base64.b64encode(signature).decode()}

    # paging ------------------------------------------------------------------------------------
    def _page(self, query: str, params: dict[str, str], items: list, size: int
              ) -> tuple[list, str | None]:
        token = params.get("pageToken")
        offset = 0
        with self._lock:
            if token:
                known = self._page_tokens.get(token)
                if known is None or known[0] != query:
                    raise _Error(400, "Invalid page token", "invalid")
                offset = known[1]
            page = items[offset:offset + size]
            next_token = None
            if offset + size < len(items):
                if self._repeat_tokens:
                    next_token = "repeated-page-token"
                    self._page_tokens[next_token] = (query, size)
                else:
                    next_token = secrets.token_urlsafe(24)
                    self._page_tokens[next_token] = (query, offset + size)
        return page, next_token

    @staticmethod
    def _max_results(params: dict[str, str], default: int, limit: int) -> int:
        text = params.get("maxResults")
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise _Error(400, f"Invalid value '{text}'. Values must be within the range: "
                              f"[1, {limit}]", "invalidParameter") from None
        if not 1 <= value <= limit:
            raise _Error(400, f"Invalid value '{text}'. Values must be within the range: "
                              f"[1, {limit}]", "invalidParameter")
        return value

    # Directory users.list -----------------------------------------------------------------------
    def _users_list(self, params: dict[str, str], principal: str) -> dict[str, Any]:
        customer, domain = params.get("customer"), params.get("domain")
        if not customer and not domain:
            raise _Error(400, "Bad Request", "badRequest")
        if customer and customer not in ("my_customer", self.customer_id):
            raise _Error(403, _NOT_AUTHORIZED, "forbidden")
        if domain and domain.lower() not in self._domains:
            raise _Error(400, "Domain not found.", "notFound")
        size = self._max_results(params, 100, 500)
        if params.get("projection", "basic") not in ("basic", "full", "custom"):
            raise _Error(400, f"Invalid value '{params['projection']}'", "invalidParameter")
        tree: dict[str, dict] = {}
        if params.get("fields"):
            try:
                tree = parse_fields(params["fields"])
            except ValueError as exc:
                raise _Error(400, str(exc), "invalidParameter") from None
            _check_user_fields(tree)
        with self._lock:
            users = sorted(self._users.values(), key=lambda u: u["primaryEmail"].lower())
        if domain:
            users = [u for u in users if u["primaryEmail"].lower().endswith("@" + domain.lower())]
        query = json.dumps({k: v for k, v in sorted(params.items()) if k != "pageToken"})
        page, next_token = self._page("users|" + query, params, users, size)
        body: dict[str, Any] = {"kind": "admin#directory#users",
                                "etag": f"\"{secrets.token_urlsafe(12)}\""}
        if page:
            body["users"] = [json.loads(json.dumps(u)) for u in page]
        if next_token:
            body["nextPageToken"] = next_token
        return apply_fields(body, tree)

    # Reports activities.list -------------------------------------------------------------------
    def _time_param(self, params: dict[str, str], key: str) -> dt.datetime | None:
        text = params.get(key)
        if text is None:
            return None
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
                            text):
            raise _Error(400, f"Invalid value '{text}' for {key}: expected RFC 3339",
                         "invalid")
        return _utc(text)

    def _activities_list(self, user_key: str, application: str, params: dict[str, str],
                         principal: str) -> dict[str, Any]:
        if application not in ALL_APPLICATIONS:
            raise _Error(400, f"Invalid value '{application}'", "invalidParameter")
        if params.get("customerId") and params["customerId"] != self.customer_id:
            raise _Error(403, _NOT_AUTHORIZED, "forbidden")
        size = self._max_results(params, 1000, 1000)
        start, end = self._time_param(params, "startTime"), self._time_param(params, "endTime")
        if start is not None and end is not None and start > end:
            raise _Error(400, "Start time must be less than or equal to end time.", "invalid")
        if start is not None and start < self._clock() - dt.timedelta(days=RETENTION_DAYS):
            raise _Error(400, "Start time must be within the last 180 days.", "invalid")
        name = params.get("eventName")
        with self._lock:
            items = [a for a in self._activities if a["id"]["applicationName"] == application]
        if user_key != "all":
            items = [a for a in items
                     if str(a["actor"].get("email", "")).lower() == user_key.lower()
                     or a["actor"].get("profileId") == user_key]
        if name:
            items = [a for a in items if any(e.get("name") == name for e in a["events"])]
        items = [a for a in items
                 if (start is None or _utc(a["id"]["time"]) >= start)
                 and (end is None or _utc(a["id"]["time"]) <= end)]
        items.sort(key=lambda a: (a["id"]["time"], a["id"]["uniqueQualifier"]), reverse=True)
        query = json.dumps([user_key, application,
                            {k: v for k, v in sorted(params.items()) if k != "pageToken"}])
        page, next_token = self._page("activities|" + query, params, items, size)
        body: dict[str, Any] = {"kind": "admin#reports#activities",
                                "etag": f"\"{secrets.token_urlsafe(12)}\""}
        if page:
            body["items"] = page
        if next_token:
            body["nextPageToken"] = next_token
        return body


def _verifies(key, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


__all__ = ["ALL_PRIVILEGES", "DIRECTORY_SCOPE", "GoogleEmulator", "IAM_SCOPES", "JWT_BEARER",
           "NEVER", "REPORTS", "REPORTS_SCOPE", "SCOPES", "USERS_READ", "apply_fields",
           "client_id_for", "make_service_account_key", "parse_fields", "rfc3339"]
