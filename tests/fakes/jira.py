"""A local emulator of Jira Cloud / Jira Service Management for the ``jira`` integration.

It serves, on 127.0.0.1 (ephemeral port) in a background thread, the documented shapes of:

- ``GET /rest/api/3/myself`` — the authenticated account, with its profile ``timeZone``;
- ``GET|POST /rest/api/3/search/jql`` — ``jql`` (a small JQL subset, below), ``fields`` (default
  ``id`` only, as on Jira), ``maxResults`` (default 50, capped at 100), ``nextPageToken``; the
  response is ``{issues, nextPageToken?, isLast}`` without a ``total``;
- ``GET /rest/servicedeskapi/request/{key}/approval`` — ``start``/``limit`` paging,
  ``{size, start, limit, isLastPage, values[...]}``, 404 for an issue that is not a request;
- ``GET|POST /rest/api/3/search`` — 410 Gone, like the removed endpoint.

JQL subset: clauses ``field op value`` (``= != > >= < <=``), ``field [NOT] IN (…)``, ``field IS
[NOT] EMPTY``, ``AND``/``OR``/``NOT``/parentheses and ``ORDER BY``, on the fields ``project``,
``key``, ``issuetype``, ``status``, ``created``, ``updated``, ``resolutiondate``/``resolved``.
Dates (``yyyy-MM-dd HH:mm``, ``yyyy/MM/dd HH:mm``, ``yyyy-MM-dd``, relative ``-5d``) are read in the
account's ``time_zone``, as Jira does. A query without any clause is refused (400, "unbounded").

Seeding (also used by the demo)::

    jira = JiraEmulator("bot@corp.example", "token", time_zone="America/New_York").start()
    jira.add_request("ACCESS-1", "Access Request", "alice@corp.example", "aws-prod",
                     created="2026-01-05T09:00:00Z", summary="AWS for Alice",
                     approvals=[("approved", "manager@corp.example", "2026-01-05T10:00:00Z")],
                     resolved="2026-01-05T11:00:00Z")
    jira.url   # → the integration's `url`

Approvals are ``(decision, approver_email, completed_at)`` with decision ``approved`` /
``declined`` / ``pending`` (``approver_email=None``: the email is hidden by profile visibility), or
dicts for several approvers (``approval(...)``). Custom fields default to: subject = a user
object in ``customfield_10050``, target system = a select option in ``customfield_10051``, request
type = JSM's object in ``customfield_10010``; ``fields={...}`` overrides any raw field value (see
``user()``, ``option()``).

Faults: ``throttle_next(n, retry_after=1)`` (429 + ``Retry-After``), ``fail_next(n, status)``,
``forbid(path_prefix)`` (403), ``repeat_next_token()``. Every request is logged in ``requests``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import threading
import uuid
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

from ._server import JsonHandler, LocalServer

REQUEST_TYPE_FIELD = "customfield_10010"
SUBJECT_FIELD = "customfield_10050"
TARGET_FIELD = "customfield_10051"
MAX_RESULTS_CAP = 100
APPROVAL_LIMIT_CAP = 50
GONE = ("The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
        "A full migration guideline is available at "
        "https://developer.atlassian.com/changelog/#CHANGE-2046")


class _ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None,
                 servicedesk: bool = False):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.servicedesk = servicedesk

    def body(self) -> dict[str, Any]:
        if self.servicedesk:
            return {"errorMessage": self.message,
                    "i18nErrorMessage": {"i18nKey": "sd.error", "parameters": []}}
        return {"errorMessages": [self.message], "errors": {}}


# --- value helpers ------------------------------------------------------------------------------

def _utc(at: dt.datetime | str | None) -> dt.datetime | None:
    if at is None:
        return None
    if isinstance(at, str):
        at = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return at.astimezone(dt.timezone.utc)


def jira_time(at: dt.datetime) -> str:
    """Jira's field format: ``2026-01-05T09:00:00.000+0000``."""
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def sd_date(at: dt.datetime) -> dict[str, Any]:
    """The servicedeskapi ``DateDTO``."""
    at = at.astimezone(dt.timezone.utc)
    return {"iso8601": at.strftime("%Y-%m-%dT%H:%M:%S+0000"), "jira": jira_time(at),
            "friendly": at.strftime("%d/%b/%y %I:%M %p"),
            "epochMillis": int(at.timestamp() * 1000)}


def account_id(email: str) -> str:
    return "712020:" + str(uuid.uuid5(uuid.NAMESPACE_DNS, email.lower()))


def user(email: str | None, *, name: str | None = None, account: str | None = None,
         base: str = "") -> dict[str, Any]:
    """A Jira user object; ``email=None`` hides ``emailAddress`` (profile visibility)."""
    account = account or account_id(email or name or "hidden")
    out = {"self": f"{base}/rest/api/3/user?accountId={account}", "accountId": account,
           "displayName": name or (email.split("@")[0].replace(".", " ").title() if email
                                   else "Hidden User"),
           "active": True, "timeZone": "UTC", "accountType": "atlassian"}
    if email is not None:
        out["emailAddress"] = email
    return out


def option(value: str, *, option_id: str | None = None) -> dict[str, Any]:
    """A select-list option as Jira returns it."""
    option_id = option_id or str(10000 + int(uuid.uuid5(uuid.NAMESPACE_OID, value).int % 89999))
    return {"self": f"/rest/api/3/customFieldOption/{option_id}", "value": value,
            "id": option_id}


def approval(decision: str, approvers: Iterable[tuple[str | None, str]], *,
             completed: dt.datetime | str | None = None, created: dt.datetime | str | None = None,
             name: str = "Approve access") -> dict[str, Any]:
    """An approval step with several approvers: ``approvers`` = [(email, approverDecision)]."""
    return {"decision": decision, "approvers": list(approvers), "completed": _utc(completed),
            "created": _utc(created), "name": name}


# --- JQL ----------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
                    r"""|(?P<op>!=|>=|<=|!~|=|>|<|~)|(?P<punct>[(),])"""
                    r"""|(?P<word>[^\s()=,!<>~"']+))""")
_DATE_FIELDS = {"created", "updated", "resolutiondate", "resolved"}
_FIELDS = {"project", "key", "issuekey", "issuetype", "type", "status"} | _DATE_FIELDS
_RELATIVE = re.compile(r"^([+-]?\d+)([wdhm])$")


class JqlError(Exception):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise JqlError(f"Error in the JQL Query: unexpected character at position {pos}.")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.append((kind, value))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str, emulator: "JiraEmulator"):
        self.tokens, self.i, self.emulator = _tokens(text), 0, emulator

    def peek(self, upper: bool = True) -> str | None:
        if self.i >= len(self.tokens):
            return None
        kind, value = self.tokens[self.i]
        return value.upper() if upper and kind == "word" else value

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise JqlError("Error in the JQL Query: the query ended unexpectedly.")
        token = self.tokens[self.i]
        self.i += 1
        return token

    def parse(self) -> tuple[Callable[[dict], bool] | None, list[tuple[str, bool]]]:
        predicate = None
        if self.peek() not in (None, "ORDER"):
            predicate = self.expr()
        order: list[tuple[str, bool]] = []
        if self.peek() == "ORDER":
            self.take()
            if self.peek() != "BY":
                raise JqlError("Error in the JQL Query: expecting 'BY' after 'ORDER'.")
            self.take()
            while True:
                field = self.take()[1].lower()
                if field not in _FIELDS:
                    raise JqlError(f"Not able to sort using field '{field}'.")
                descending = False
                if self.peek() in ("ASC", "DESC"):
                    descending = self.take()[1].upper() == "DESC"
                order.append((field, descending))
                if self.peek() != ",":
                    break
                self.take()
        if self.peek() is not None:
            raise JqlError(f"Error in the JQL Query: unexpected '{self.peek(False)}'.")
        return predicate, order

    def expr(self):
        left = self.term()
        while self.peek() == "OR":
            self.take()
            right = self.term()
            left = (lambda a, b: lambda issue: a(issue) or b(issue))(left, right)
        return left

    def term(self):
        left = self.factor()
        while self.peek() == "AND":
            self.take()
            right = self.factor()
            left = (lambda a, b: lambda issue: a(issue) and b(issue))(left, right)
        return left

    def factor(self):
        if self.peek() == "NOT":
            self.take()
            inner = self.factor()
            return lambda issue: not inner(issue)
        if self.peek() == "(":
            self.take()
            inner = self.expr()
            if self.take()[1] != ")":
                raise JqlError("Error in the JQL Query: expecting ')'.")
            return inner
        return self.clause()

    def clause(self):
        kind, field = self.take()
        field = field.lower()
        if kind not in ("word", "str") or field not in _FIELDS:
            raise JqlError(f"Field '{field}' does not exist or you do not have permission to "
                           "view it.")
        op_kind, op = self.take()
        op = op.upper()
        if op == "IS":
            negate = self.peek() == "NOT"
            if negate:
                self.take()
            if self.take()[1].upper() not in ("EMPTY", "NULL"):
                raise JqlError("Error in the JQL Query: expecting EMPTY after IS.")
            return lambda issue: (self.emulator._value(issue, field) is None) != negate
        if op in ("IN", "NOT"):
            if op == "NOT":
                if self.take()[1].upper() != "IN":
                    raise JqlError("Error in the JQL Query: expecting IN after NOT.")
            if self.take()[1] != "(":
                raise JqlError("Error in the JQL Query: expecting '(' after IN.")
            values = []
            while True:
                values.append(self.literal(field, self.take()[1]))
                separator = self.take()[1]
                if separator == ")":
                    break
                if separator != ",":
                    raise JqlError("Error in the JQL Query: expecting ',' or ')'.")
            negate = op == "NOT"
            return lambda issue: (self.emulator._value(issue, field) in values) != negate
        if op_kind != "op" or op in ("~", "!~"):
            raise JqlError(f"The operator '{op}' is not supported by the emulator for field "
                           f"'{field}'.")
        value = self.literal(field, self.take()[1])
        compare = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b,
                   ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
                   "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}[op]
        if op in (">", ">=", "<", "<=") and field not in _DATE_FIELDS:
            raise JqlError(f"The operator '{op}' is not supported by the '{field}' field.")

        def check(issue):
            actual = self.emulator._value(issue, field)
            return actual is not None and compare(actual, value)
        return check

    def literal(self, field: str, text: str):
        if field in _DATE_FIELDS:
            return self.emulator._jql_date(text)
        return text.casefold()


# --- the emulator -------------------------------------------------------------------------------

class JiraEmulator(LocalServer):
    """Jira Cloud + JSM on 127.0.0.1; see the module docstring."""

    def __init__(self, email: str = "compliance-bot@corp.example", api_token: str = "jira-token",
                 *, time_zone: str | None = "UTC", request_type_field: str = REQUEST_TYPE_FIELD,
                 subject_field: str = SUBJECT_FIELD, target_field: str = TARGET_FIELD,
                 service_desk_id: str = "1", approval_limit_cap: int = APPROVAL_LIMIT_CAP):
        self.email, self.api_token = email, api_token
        self.time_zone = time_zone            # None: hidden, as with strict privacy settings
        self.request_type_field, self.subject_field = request_type_field, subject_field
        self.target_field, self.service_desk_id = target_field, service_desk_id
        self.approval_limit_cap = approval_limit_cap   # the server may page smaller than asked
        self._defaults = (time_zone, approval_limit_cap)
        self.now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
        self._lock = threading.Lock()
        self._issues: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, tuple[str, int]] = {}
        self._faults: list[tuple[str | None, int, dict, str]] = []
        self._forbidden: list[str] = []
        self._repeat_tokens = False
        self._next_id = 10000
        self.requests: list[dict[str, Any]] = []

    # --- seeding ------------------------------------------------------------------------------
    def add_request(self, key: str, request_type: str, subject_email: str | None,
                    target_system: str | None, created: dt.datetime | str, summary: str = "",
                    approvals: Iterable[tuple | dict] = (),
                    resolved: dt.datetime | str | None = None, *,
                    issue_type: str = "Service Request",
                    updated: dt.datetime | str | None = None,
                    status: str | None = None, reporter: str | None = None,
                    fields: dict[str, Any] | None = None,
                    service_request: bool = True) -> dict[str, Any]:
        """Add an issue (a JSM request unless ``service_request=False``). ``request_type`` names
        the JSM request type (None: no request type, only the issue type). Returns the issue."""
        created_at, resolved_at = _utc(created), _utc(resolved)
        steps = [self._approval(a, created_at) for a in approvals]
        moments = [created_at] + [resolved_at] * bool(resolved_at) + \
            [s["completed"] for s in steps if s["completed"]]
        updated_at = _utc(updated) or max(moments)
        project = key.rsplit("-", 1)[0]
        with self._lock:
            self._next_id += 1
            issue_id = str(self._next_id)
        status = status or ("Done" if resolved_at else
                            "Waiting for approval" if any(s["decision"] == "pending"
                                                          for s in steps) else "In Progress")
        raw: dict[str, Any] = {
            "summary": summary,
            "created": jira_time(created_at),
            "updated": jira_time(updated_at),
            "resolutiondate": jira_time(resolved_at) if resolved_at else None,
            "issuetype": {"id": str(10000 + len(issue_type)), "name": issue_type,
                          "subtask": False, "hierarchyLevel": 0},
            "status": {"name": status, "id": str(10000 + len(status)),
                       "statusCategory": {"key": "done" if resolved_at else "indeterminate"}},
            "project": {"key": project, "name": project.title(), "projectTypeKey":
                        "service_desk" if service_request else "software"},
            "reporter": user(reporter or subject_email or "reporter@corp.example"),
            self.subject_field: user(subject_email) if subject_email is not None else None,
            self.target_field: option(target_system) if target_system is not None else None,
        }
        if request_type is not None and service_request:
            raw[self.request_type_field] = {
                "_links": {"jiraRest": f"/rest/api/2/issue/{issue_id}"},
                "requestType": {"id": str(1 + len(request_type)), "name": request_type,
                                "description": "", "issueTypeId": raw["issuetype"]["id"],
                                "serviceDeskId": self.service_desk_id, "groupIds": ["1"]},
                "currentStatus": {"status": status, "statusCategory": "INDETERMINATE",
                                  "statusDate": sd_date(updated_at)}}
        raw.update(fields or {})
        issue = {"id": issue_id, "key": key, "project": project, "fields": raw,
                 "created": created_at, "updated": updated_at, "resolved": resolved_at,
                 "service_request": service_request, "approvals": steps,
                 "issuetype": issue_type, "status": status}
        with self._lock:
            self._issues[key] = issue
        return issue

    def add_generated(self, count: int, start: dt.datetime | str, *, project: str = "ACCESS",
                      every: dt.timedelta = dt.timedelta(hours=1),
                      request_type: str = "Access Request", target_system: str = "aws-prod",
                      approver: str = "manager@corp.example",
                      approval_delay: dt.timedelta = dt.timedelta(minutes=30),
                      first_number: int = 1) -> list[str]:
        """``count`` approved access requests ``every`` apart, for ``user0001@corp.example``…"""
        start = _utc(start)
        keys = []
        for i in range(count):
            number = first_number + i
            created = start + i * every
            key = f"{project}-{number}"
            self.add_request(key, request_type, f"user{number:04d}@corp.example", target_system,
                             created, summary=f"Access for user {number}",
                             approvals=[("approved", approver, created + approval_delay)])
            keys.append(key)
        return keys

    def _approval(self, spec: tuple | dict, created: dt.datetime) -> dict[str, Any]:
        if isinstance(spec, dict):
            step = dict(spec)
        else:
            decision, email, completed = (tuple(spec) + (None,) * 3)[:3]
            per = decision if decision in ("approved", "declined") else "pending"
            step = {"decision": decision, "approvers": [(email, per)],
                    "completed": _utc(completed), "created": None, "name": "Approve access"}
        step["created"] = step.get("created") or created
        if step["decision"] == "pending":
            step["completed"] = None
        return step

    # --- faults -------------------------------------------------------------------------------
    def throttle_next(self, n: int = 1, retry_after: int | str = 1,
                      path: str | None = None) -> None:
        """The next ``n`` requests (to paths starting with ``path``) get 429 + Retry-After."""
        with self._lock:
            self._faults += [(path, 429, {"Retry-After": str(retry_after)},
                              "Rate limit exceeded.")] * n

    def fail_next(self, n: int = 1, status: int = 503, path: str | None = None) -> None:
        with self._lock:
            self._faults += [(path, status, {}, "Service unavailable.")] * n

    def forbid(self, path_prefix: str) -> None:
        """Answer 403 to every request whose path starts with ``path_prefix``."""
        with self._lock:
            self._forbidden.append(path_prefix)

    def repeat_next_token(self, enabled: bool = True) -> None:
        """Simulate a paging bug: every page after the first carries the same token."""
        with self._lock:
            self._repeat_tokens = enabled

    def reset(self) -> None:
        with self._lock:
            self._issues.clear()
            self._tokens.clear()
            self._faults.clear()
            self._forbidden.clear()
            self._repeat_tokens = False
            self.requests.clear()
            self.time_zone, self.approval_limit_cap = self._defaults

    def search_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/rest/api/3/search/jql"]

    def approval_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].startswith("/rest/servicedeskapi/")]

    # --- server -------------------------------------------------------------------------------
    def start(self) -> "JiraEmulator":
        emulator = self

        class Handler(JsonHandler):
            content_type = "application/json;charset=UTF-8"

            def _serve(self):
                status, headers, payload = emulator._handle(self.command, self.path,
                                                            self.headers, self.read_body())
                self.send_json(status, payload, headers)

            do_GET = do_POST = _serve  # noqa: N815 - http.server naming

        return self._serve(Handler, name="jira-emulator")

    # --- protocol -----------------------------------------------------------------------------
    def _handle(self, method: str, target: str, headers, raw: bytes):
        parts = urlsplit(target)
        path = unquote(parts.path)
        params = {k: v if len(v) > 1 else v[0]
                  for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        entry: dict[str, Any] = {"method": method, "path": path, "params": params, "json": None,
                                 "status": 200}
        with self._lock:
            self.requests.append(entry)
        try:
            if raw:
                try:
                    entry["json"] = json.loads(raw)
                except ValueError:
                    raise _ApiError(400, "The request body is not valid JSON.") from None
            self._authenticate(headers)
            with self._lock:
                fault = next((f for f in self._faults
                              if f[0] is None or path.startswith(f[0])), None)
                if fault:
                    self._faults.remove(fault)
                forbidden = any(path.startswith(p) for p in self._forbidden)
            if fault:
                raise _ApiError(fault[1], fault[3], fault[2])
            if forbidden:
                raise _ApiError(403, "You do not have permission to access this resource.",
                                servicedesk=path.startswith("/rest/servicedeskapi/"))
            status, payload = self._route(method, path, params, entry["json"])
            return status, {}, payload
        except JqlError as err:
            entry["status"] = 400
            return 400, {}, {"errorMessages": [str(err)], "warningMessages": []}
        except _ApiError as err:
            entry["status"] = err.status
            return err.status, err.headers, err.body()

    def _authenticate(self, headers) -> None:
        auth = headers.get("Authorization") or ""
        expected = base64.b64encode(f"{self.email}:{self.api_token}".encode()).decode()
        if auth != f"Basic {expected}":
            raise _ApiError(401, "Client must be authenticated to access this resource.",
                            {"WWW-Authenticate": 'Basic realm="protected-area"'})

    def _route(self, method: str, path: str, params: dict, body: Any):
        if path in ("/rest/api/3/search", "/rest/api/2/search"):
            raise _ApiError(410, GONE)
        if path == "/rest/api/3/myself" and method == "GET":
            me = user(self.email, base=self.url or "")
            me["timeZone"] = self.time_zone
            if self.time_zone is None:
                del me["timeZone"]
            return 200, me
        if path == "/rest/api/3/search/jql":
            if method == "POST":
                if not isinstance(body, dict):
                    raise _ApiError(400, "The request body must be a JSON object.")
                return 200, self._search(body.get("jql"), body.get("fields"),
                                         body.get("maxResults"), body.get("nextPageToken"))
            fields = params.get("fields")
            if isinstance(fields, str):
                fields = fields.split(",")
            elif isinstance(fields, list):
                fields = [f for value in fields for f in value.split(",")]
            max_results = params.get("maxResults")
            return 200, self._search(params.get("jql"), fields,
                                     int(max_results) if max_results else None,
                                     params.get("nextPageToken"))
        match = re.fullmatch(r"/rest/servicedeskapi/request/([^/]+)/approval", path)
        if match and method == "GET":
            return 200, self._approvals(match.group(1), params)
        raise _ApiError(404, f"No resource found for {method} {path}.")

    # --- search -------------------------------------------------------------------------------
    def _search(self, jql: Any, fields: Any, max_results: Any, token: Any) -> dict[str, Any]:
        if not isinstance(jql, str) or not jql.strip():
            raise _ApiError(400, "Unbounded JQL queries are not allowed here. Please add a "
                                 "search restriction to your query.")
        predicate, order = _Parser(jql, self).parse()
        if predicate is None:
            raise _ApiError(400, "Unbounded JQL queries are not allowed here. Please add a "
                                 "search restriction to your query.")
        if fields is None:
            fields = ["id"]
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise _ApiError(400, "'fields' must be a list of field ids.")
        if max_results is None:
            max_results = 50
        if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 0:
            raise _ApiError(400, "'maxResults' must be a non-negative integer.")
        max_results = min(max_results, MAX_RESULTS_CAP)
        offset = 0
        with self._lock:
            if token is not None:
                known = self._tokens.get(token)
                if known is None or known[0] != jql:
                    raise _ApiError(400, "The provided next page token is invalid or expired.")
                offset = known[1]
            issues = [i for i in self._issues.values() if predicate(i)]
            for field, descending in reversed(order or [("key", False)]):
                issues.sort(key=lambda i, f=field: self._sort_key(i, f), reverse=descending)
            page = issues[offset:offset + max_results]
            result: dict[str, Any] = {"issues": [self._wire(i, fields) for i in page]}
            more = offset + max_results < len(issues) and max_results > 0
            if more:
                if self._repeat_tokens:
                    next_token = "repeated-token"
                    self._tokens[next_token] = (jql, max_results)
                else:
                    next_token = secrets.token_urlsafe(24)
                    self._tokens[next_token] = (jql, offset + max_results)
                result["nextPageToken"] = next_token
            result["isLast"] = not more
        return result

    def _value(self, issue: dict[str, Any], field: str):
        if field == "project":
            return issue["project"].casefold()
        if field in ("key", "issuekey"):
            return issue["key"].casefold()
        if field in ("issuetype", "type"):
            return issue["issuetype"].casefold()
        if field == "status":
            return issue["status"].casefold()
        if field == "created":
            return issue["created"]
        if field == "updated":
            return issue["updated"]
        return issue["resolved"]

    def _sort_key(self, issue: dict[str, Any], field: str):
        if field in ("key", "issuekey"):
            project, _, number = issue["key"].rpartition("-")
            return (project, int(number) if number.isdigit() else 0)
        value = self._value(issue, field)
        floor = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        return value if value is not None else (floor if field in _DATE_FIELDS else "")

    def _jql_date(self, text: str) -> dt.datetime:
        now = self.now()
        match = _RELATIVE.match(text.strip())
        if match:
            unit = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
            return now + dt.timedelta(**{unit: int(match.group(1))})
        zone = ZoneInfo(self.time_zone) if self.time_zone else dt.timezone.utc
        for fmt in ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d"):
            try:
                local = dt.datetime.strptime(text.strip(), fmt)
            except ValueError:
                continue
            return local.replace(tzinfo=zone).astimezone(dt.timezone.utc)
        raise JqlError(f"Date value '{text}' for field is invalid. Valid formats include: "
                       "'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a "
                       "period format e.g. '-5d', '4w 2d'.")

    def _wire(self, issue: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        wanted = set(fields)
        everything = bool(wanted & {"*all", "*navigable"})
        excluded = {f[1:] for f in wanted if f.startswith("-")}
        out: dict[str, Any] = {"id": issue["id"]}
        if everything or "key" in wanted:
            out["key"] = issue["key"]
            out["self"] = f"{self.url}/rest/api/3/issue/{issue['id']}"
        chosen = {name: value for name, value in issue["fields"].items()
                  if (everything or name in wanted) and name not in excluded}
        if chosen or (wanted - {"id", "key"}):
            out["fields"] = chosen
        return out

    # --- approvals ----------------------------------------------------------------------------
    def _approvals(self, key: str, params: dict) -> dict[str, Any]:
        with self._lock:
            issue = self._issues.get(key) or next(
                (i for i in self._issues.values() if i["id"] == key), None)
        if issue is None or not issue["service_request"]:
            raise _ApiError(404, "Request does not exist or you do not have permission to see "
                                 "it.", servicedesk=True)
        try:
            start = int(params.get("start", 0))
            limit = min(int(params.get("limit", APPROVAL_LIMIT_CAP)), self.approval_limit_cap)
        except ValueError:
            raise _ApiError(400, "start and limit must be integers", servicedesk=True) from None
        if start < 0 or limit < 1:
            raise _ApiError(400, "start must be >= 0 and limit >= 1", servicedesk=True)
        steps = issue["approvals"]
        values = [self._approval_wire(issue, n, step) for n, step in enumerate(steps)]
        page = values[start:start + limit]
        base = f"{self.url}/rest/servicedeskapi/request/{issue['id']}/approval"
        last = start + limit >= len(values)
        links = {"base": self.url, "context": "", "self": f"{base}?start={start}&limit={limit}"}
        if not last:
            links["next"] = f"{base}?start={start + limit}&limit={limit}"
        return {"_expands": [], "size": len(page), "start": start, "limit": limit,
                "isLastPage": last, "_links": links, "values": page}

    def _approval_wire(self, issue: dict[str, Any], n: int, step: dict[str, Any]) \
            -> dict[str, Any]:
        approval_id = str(int(issue["id"]) * 10 + n)
        out = {
            "id": approval_id, "name": step["name"], "finalDecision": step["decision"],
            "canAnswerApprovalDecision": False,
            "approvers": [{"approver": user(email, base=self.url or ""),
                           "approverDecision": decision}
                          for email, decision in step["approvers"]],
            "createdDate": sd_date(step["created"]),
            "_links": {"self": f"{self.url}/rest/servicedeskapi/request/{issue['id']}/approval/"
                               f"{approval_id}"},
        }
        if step["completed"] is not None:
            out["completedDate"] = sd_date(step["completed"])
        return out
