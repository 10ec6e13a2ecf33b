"""Jira Cloud / Jira Service Management: access tickets and their approvals (DESIGN §3, §9).

Calls, all plain HTTPS with Basic auth (account email + API token):

- ``GET /rest/api/3/myself`` — who we are (the run-as principal) and the account's profile time
  zone, in which Jira reads the dates of a JQL query.
- ``POST /rest/api/3/search/jql`` — the configured JQL bounded by the collection window, paged by
  ``nextPageToken``, with an explicit ``fields`` list (the endpoint returns only ``id`` otherwise).
  The old ``/rest/api/3/search`` answers 410 and is never called.
- ``GET /rest/servicedeskapi/request/{key}/approval`` — the approval records of each mapped
  ticket (paged by ``start``/``limit``/``isLastPage``). The approval time is the approval's
  ``completedDate`` and the approver is the one whose ``approverDecision`` is ``approved``: system
  records, never an editable field of the issue.

Window and time zone: JQL dates have minute precision and Jira reads them in the *searching
account's profile time zone*. We read that zone from ``/myself`` and write the bounds in it,
widened by an hour on each side (DST folds, minute rounding); when the zone is hidden or unknown
we write UTC and widen by 14 hours, the largest UTC offset. Either way the query covers
[since, until]; the extra tickets are harmless (tickets are deduplicated by key downstream).
"""

from __future__ import annotations

import collections
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.config import Secret, SourceConfig
from collector.errors import SourceError
from collector.http import RetryPolicy, make_session
from collector.integration import CollectContext, CollectResult, Integration, Permission
from collector.paging import TokenPaginator

from .tickets import (
    DEFAULT_BACKFILL_DAYS,
    MAX_BACKFILL_DAYS,
    Decision,
    Fetcher,
    base_url,
    ca_bundle,
    decide,
    existing_ca_bundle,
    field_text,
    fields_mapping,
    kinds_mapping,
    parse_time,
    plain_or_secret,
    record,
    reveal,
    secret,
    ticket_window,
    tickets_frame,
    whole_number,
)

SEARCH_PATH = "/rest/api/3/search/jql"
MYSELF_PATH = "/rest/api/3/myself"
APPROVAL_PATH = "/rest/servicedeskapi/request/{key}/approval"
APPROVAL_PAGE = 50                       # the servicedeskapi maximum
BASE_FIELDS = ("key", "created", "updated", "resolutiondate", "status", "reporter", "summary",
               "issuetype")
FIELDS = {
    "subject_email": "field id holding the person the ticket is about (user, text or select)",
    "target_system": "field id holding the system access is requested for (select or text)",
    "request_type": "JSM 'Customer Request Type' field id (e.g. customfield_10010); without it "
                    "kinds are looked up by issue type name only",
}
DECISIONS = {"approved": "approved", "declined": "rejected", "pending": "pending"}
KNOWN_ZONE_MARGIN = dt.timedelta(hours=1)
UNKNOWN_ZONE_MARGIN = dt.timedelta(hours=14)
_ORDER_BY = re.compile(r"\border\s+by\b", re.I)
AUTH_HINT = ("check 'email' and 'api_token' (an API token created by that Atlassian account; "
             "Basic auth)")
BROWSE_HINT = "the account needs the 'Browse projects' permission on the project(s) of the jql"
APPROVALS_HINT = ("the account needs to be a Service Desk agent (team member) on the service "
                  "project to read the approvals of every request")


@dataclass(frozen=True)
class Settings:
    url: str
    email: str | Secret
    api_token: Secret
    jql: str
    fields: dict[str, str]
    kinds: dict[str, str]
    max_attempts: int = 6
    backfill_days: int = DEFAULT_BACKFILL_DAYS
    page_size: int = 100
    ca_bundle: str | None = None

    @classmethod
    def from_source(cls, source: SourceConfig) -> "Settings":
        jql = source.options.get("jql")
        if not isinstance(jql, str) or not jql.strip():
            raise source.error("jql", "must be a JQL query selecting the access tickets, e.g. "
                                      "'project = ACCESS' (the collection window is added)")
        if _ORDER_BY.search(jql):
            raise source.error("jql", "must not contain ORDER BY (the collector orders and "
                                      "bounds the query itself)")
        return cls(
            url=base_url(source), email=plain_or_secret(source, "email"),
            api_token=secret(source, "api_token"), jql=jql.strip(),
            fields=fields_mapping(source, FIELDS, ("subject_email", "target_system")),
            kinds=kinds_mapping(source, "request type / issue type names"),
            max_attempts=whole_number(source, "max_attempts", 6, 1, 20),
            backfill_days=whole_number(source, "backfill_days", DEFAULT_BACKFILL_DAYS, 1,
                                       MAX_BACKFILL_DAYS),
            page_size=whole_number(source, "page_size", 100, 1, 100),
            ca_bundle=ca_bundle(source))

    @property
    def search_fields(self) -> list[str]:
        extra = [self.fields[k] for k in ("request_type", "subject_email", "target_system")
                 if k in self.fields]
        return list(dict.fromkeys([*BASE_FIELDS, *extra]))


class Jira(Integration):
    type = "jira"
    title = "Jira Service Management"
    tables = ("tickets",)
    # Tickets are kept by Jira; there is no event history that expires.
    log_retention_days = None
    default_backfill_days = DEFAULT_BACKFILL_DAYS
    options = {
        "url": "site URL, e.g. https://corp.atlassian.net (endpoint override for tests)",
        "email": "email of the Atlassian account that collects (Basic auth user)",
        "api_token": "API token of that account: env:NAME or file:PATH",
        "jql": "JQL selecting the access tickets, without ORDER BY; the collection window is "
               "added as 'AND updated >= … AND updated <= …'",
        "fields": "table: subject_email, target_system (required) and request_type field ids",
        "kinds": "table: request type or issue type name → access_request / offboarding / "
                 "role_change; other types are skipped and counted",
        "max_attempts": "HTTP attempts per request, retries on 429/5xx included (default 6)",
        "backfill_days": f"days of tickets (by last update) the first collection pulls "
                         f"(default {DEFAULT_BACKFILL_DAYS})",
        "page_size": "issues per search page (1-100, default 100)",
        "ca_bundle": "PEM file of the CA that signs the server certificate (self-hosted proxies)",
    }
    required_options = ("url", "email", "api_token", "jql", "kinds", "fields")
    permissions = (
        Permission("jira-permission", "Browse projects",
                   "project permission on every project the jql covers: search the tickets and "
                   "read their fields (custom fields included)"),
        Permission("jira-permission", "Service Desk agent (service project team member)",
                   "read the approval records of every request through /rest/servicedeskapi/"
                   "request/{key}/approval; a customer sees only its own requests"),
        Permission("jira-permission", "Browse users and groups",
                   "global permission; with the users' profile visibility it decides whether "
                   "emailAddress of approvers and subjects is returned (hidden emails are "
                   "reported as a limitation)"),
    )

    @classmethod
    def validate(cls, source: SourceConfig) -> None:
        super().validate(source)
        Settings.from_source(source)

    def collect(self, ctx: CollectContext) -> CollectResult:
        settings = Settings.from_source(ctx.config)
        client = JiraClient(ctx, settings)
        me = client.myself()
        since, until = ticket_window(ctx, settings.backfill_days)
        jql, zone_used = window_jql(settings.jql, since, until, me.get("timeZone"))

        rows, unmapped = [], collections.Counter()
        seen: set[str] = set()
        not_requests, no_completed, hidden_approver = [], [], []
        issues = 0
        for issue in client.search(jql, settings.search_fields):
            issues += 1
            row, type_name = map_issue(issue, settings, source=ctx.name)
            if row is None:
                unmapped[type_name or "(none)"] += 1
                continue
            if row["key"] in seen:
                continue
            seen.add(row["key"])
            approvals = client.approvals(row["key"])
            if approvals is None:
                not_requests.append(row["key"])
                approvals = []
            decisions = [approval_decision(a) for a in approvals]
            row["status"], row["approved_at"], row["approver_email"] = decide(decisions)
            if any(d.state == "approved" and d.at is None for d in decisions):
                no_completed.append(row["key"])
            if row["status"] == "approved" and not row["approver_email"]:
                hidden_approver.append(row["key"])
            rows.append(row)

        tickets = tickets_frame(rows, source=ctx.name)
        limitations = []
        if not_requests:
            limitations.append(
                f"{len(not_requests)} ticket(s) have no JSM approvals (the approvals endpoint "
                f"answered 404: not a service request, or not visible to the account); they are "
                f"recorded as pending: {', '.join(not_requests[:20])}")
        if hidden_approver:
            limitations.append(
                f"{len(hidden_approver)} approved ticket(s) have no approver email (hidden by "
                f"profile visibility, or approved by automation); self-approval cannot be judged "
                f"for them: {', '.join(hidden_approver[:20])}")
        if no_completed:
            limitations.append(
                f"{len(no_completed)} approval(s) marked approved carry no completedDate: "
                f"{', '.join(no_completed[:20])}")
        ctx.log.info("jira: %d issue(s) searched, %d ticket(s) kept, %d skipped (unmapped "
                     "types), %d request(s)", issues, len(tickets), sum(unmapped.values()),
                     client.http.count)
        return CollectResult(
            tables={"tickets": tickets},
            principal=_principal(me),
            instances=[settings.url],
            limitations=limitations,
            extra={
                "window": {"start": _iso(since), "end": _iso(until)},
                "jql": jql,
                "jql_time_zone": zone_used,
                "issues_searched": issues,
                "tickets": len(tickets),
                "kinds": dict(collections.Counter(r["kind"] for r in rows)),
                "statuses": dict(collections.Counter(r["status"] for r in rows)),
                "skipped_unmapped_types": dict(unmapped),
                "search_pages": client.search_pages,
                "approval_requests": client.approval_requests,
                "requests": client.http.count,
            })

    def check(self, ctx: CollectContext) -> list[str]:
        settings = Settings.from_source(ctx.config)
        client = JiraClient(ctx, settings, record_pages=False)
        try:
            me = client.myself()
        except SourceError as exc:
            return [str(exc)]
        since = ctx.now - dt.timedelta(days=settings.backfill_days)
        jql, _ = window_jql(settings.jql, since, ctx.now, me.get("timeZone"))
        try:
            issues = list(client.search(jql, ["key"], max_results=1, one_page=True))
        except SourceError as exc:
            return [str(exc)]
        if not issues:
            return [f"cannot verify access to approvals: the jql matched no ticket updated in the "
                    f"last {settings.backfill_days} days ({APPROVALS_HINT})"]
        key = str(issues[0].get("key"))
        try:
            approvals = client.approvals(key, one_page=True)
        except SourceError as exc:
            return [str(exc)]
        problems = []
        if approvals is None:
            problems.append(f"GET {APPROVAL_PATH.format(key=key)} answered 404: {key} is not a "
                            f"JSM request, or {APPROVALS_HINT}")
        return problems


class JiraClient:
    """The HTTP calls of one collection: one session (shared retry policy), raw recording."""

    def __init__(self, ctx: CollectContext, settings: Settings, *, record_pages: bool = True):
        self.ctx, self.settings, self.record_pages = ctx, settings, record_pages
        session = make_session(ca_bundle=existing_ca_bundle(ctx.config, settings.ca_bundle),
                               policy=RetryPolicy(max_attempts=settings.max_attempts))
        session.auth = (reveal(settings.email), settings.api_token.reveal())
        session.headers["Accept"] = "application/json"
        self.http = Fetcher(session, ctx, auth_hint=AUTH_HINT)
        self.search_pages = 0
        self.approval_requests = 0

    def _record(self, request: str, path: str, call: dict, body: Any, records: int,
                parameters: dict | None = None) -> None:
        if self.record_pages:
            record(self.ctx, request, endpoint=self.settings.url + path, call=call, body=body,
                   records=records, parameters=parameters)

    def myself(self) -> dict[str, Any]:
        body = self.http.json(self.settings.url + MYSELF_PATH, what="GET /rest/api/3/myself")
        self._record("jira.myself", MYSELF_PATH, {"method": "GET", "path": MYSELF_PATH},
                     {k: body.get(k) for k in ("accountId", "emailAddress", "displayName",
                                               "timeZone", "accountType", "active")}, 1)
        return body

    def search(self, jql: str, fields: list[str], *, max_results: int | None = None,
               one_page: bool = False) -> Iterator[dict[str, Any]]:
        url = self.settings.url + SEARCH_PATH
        base = {"jql": jql, "fields": fields,
                "maxResults": max_results or self.settings.page_size}

        def fetch(token):
            payload = {**base, **({"nextPageToken": token} if token else {})}
            try:
                page = self.http.json(url, method="POST", json=payload,
                                      what=f"POST {SEARCH_PATH}", permission_hint=BROWSE_HINT)
            except SourceError as exc:
                if self.http.last_status == 400:
                    raise SourceError(self.ctx.name, f"{exc.args[0].split(': ', 1)[-1]} — check "
                                                     f"the jql; a project the account cannot "
                                                     f"browse is reported as not existing "
                                                     f"({BROWSE_HINT})") from None
                raise
            issues = page.get("issues")
            if not isinstance(issues, list):
                raise SourceError(self.ctx.name, f"POST {SEARCH_PATH}: the response has no "
                                                 "'issues' list")
            self.search_pages += 1
            self._record("jira.search", SEARCH_PATH, {"method": "POST", "path": SEARCH_PATH,
                                                      "json": payload},
                         page, len(issues), parameters=base)
            return page

        def next_token(page):
            token = page.get("nextPageToken")
            if page.get("isLast") is True or one_page:
                return None
            if not token and page.get("isLast") is False:
                raise SourceError(self.ctx.name, f"POST {SEARCH_PATH}: isLast is false but no "
                                                 "nextPageToken came back; stopped")
            return token

        for page in TokenPaginator(fetch, next_token, source=self.ctx.name,
                                   request=f"POST {SEARCH_PATH}"):
            yield from page["issues"]

    def approvals(self, key: str, *, one_page: bool = False) -> list[dict[str, Any]] | None:
        """Every approval record of a request; None when Jira says 404 (not a JSM request)."""
        path = APPROVAL_PATH.format(key=quote(key, safe=""))
        url = self.settings.url + path
        out: list[dict[str, Any]] = []
        limit = 1 if one_page else APPROVAL_PAGE

        def fetch(token):
            params = {"start": int(token or 0), "limit": limit}
            self.approval_requests += 1
            page = self.http.json(url, params=params, what=f"GET {path}",
                                  permission_hint=APPROVALS_HINT)
            values = page.get("values")
            if not isinstance(values, list):
                raise SourceError(self.ctx.name, f"GET {path}: the response has no 'values' list")
            self._record("jira.approvals", path, {"method": "GET", "path": path,
                                                  "params": params, "key": key},
                         page, len(values),
                         parameters={"path": APPROVAL_PATH, "limit": limit})
            return page

        def next_token(page):
            if page.get("isLastPage", True) or one_page:
                return None
            start = page.get("start", 0)
            size = page.get("size", len(page.get("values") or []))
            return str(int(start) + int(size))     # a string: "0" must not read as "no token"

        try:
            for page in TokenPaginator(fetch, next_token, source=self.ctx.name,
                                       request=f"GET {APPROVAL_PATH}"):
                out.extend(page["values"])
        except SourceError:
            if self.http.last_status == 404:
                self._record("jira.approvals", path, {"method": "GET", "path": path, "key": key},
                             {"status": 404, "text": (self.http.last.text or "")[:300]}, 0)
                return None
            raise
        return out


# --- pure mapping (no I/O) ----------------------------------------------------------------------

def window_jql(jql: str, since: dt.datetime, until: dt.datetime,
               time_zone: str | None) -> tuple[str, str]:
    """The configured JQL bounded by [since, until] in the account's time zone (see the module
    docstring); returns the query and the zone used (``"UTC (zone unknown)"`` when unknown)."""
    zone, margin, label = dt.timezone.utc, UNKNOWN_ZONE_MARGIN, "UTC (account zone unknown)"
    if time_zone:
        try:
            zone, margin, label = ZoneInfo(str(time_zone)), KNOWN_ZONE_MARGIN, str(time_zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    low = (since - margin).astimezone(zone).replace(second=0, microsecond=0, tzinfo=None)
    high = (until + margin).astimezone(zone).replace(second=0, microsecond=0, tzinfo=None) \
        + dt.timedelta(minutes=1)
    return (f'({jql}) AND updated >= "{low:%Y-%m-%d %H:%M}" AND updated <= '
            f'"{high:%Y-%m-%d %H:%M}" ORDER BY created ASC, key ASC'), label


def kind_of(fields: dict[str, Any], settings: Settings) -> tuple[str | None, str | None]:
    """(kind, the type name looked up): the request type name first, then the issue type."""
    names = []
    field_id = settings.fields.get("request_type")
    if field_id:
        value = fields.get(field_id)
        if isinstance(value, dict):
            request_type = value.get("requestType")
            name = request_type.get("name") if isinstance(request_type, dict) else \
                value.get("name") or value.get("value")
            if name:
                names.append(str(name))
        elif isinstance(value, str) and value.strip():
            names.append(value.strip())
    issue_type = fields.get("issuetype")
    if isinstance(issue_type, dict) and issue_type.get("name"):
        names.append(str(issue_type["name"]))
    for name in names:
        kind = settings.kinds.get(name.strip().casefold())
        if kind:
            return kind, name
    return None, names[0] if names else None


def map_issue(issue: dict[str, Any], settings: Settings, *, source: str) \
        -> tuple[dict[str, Any] | None, str | None]:
    """A search result → a ``tickets`` row without its approval columns, or (None, type name)
    when its type maps to no kind."""
    fields = issue.get("fields") or {}
    key = issue.get("key") or fields.get("key")
    if not key:
        raise SourceError(source, f"POST {SEARCH_PATH} returned an issue without a key "
                                  f"(id {issue.get('id')!r}); were 'fields' sent?")
    kind, type_name = kind_of(fields, settings)
    if kind is None:
        return None, type_name
    return {
        "system": "jira", "key": str(key), "kind": kind,
        "subject_email": field_text(fields.get(settings.fields["subject_email"])),
        "target_system": field_text(fields.get(settings.fields["target_system"])),
        "requested_at": parse_time(fields.get("created")),
        "approved_at": None, "approver_email": None, "status": "pending",
        "resolved_at": parse_time(fields.get("resolutiondate")),
        "url": f"{settings.url}/browse/{quote(str(key), safe='')}",
        "summary": fields.get("summary") if isinstance(fields.get("summary"), str) else None,
    }, type_name


def approval_decision(approval: dict[str, Any]) -> Decision:
    """One JSM approval → a ``Decision``: time from ``completedDate``, approver from the
    approver whose ``approverDecision`` is ``approved``. Unknown decisions count as pending."""
    state = DECISIONS.get(str(approval.get("finalDecision", "")).lower(), "pending")
    completed = approval.get("completedDate") or {}
    at = None
    if isinstance(completed, dict):
        at = parse_time(completed.get("iso8601")) or parse_time(completed.get("epochMillis"))
    elif isinstance(completed, str):
        at = parse_time(completed)
    email = None
    if state == "approved":
        for entry in approval.get("approvers") or []:
            if str(entry.get("approverDecision", "")).lower() == "approved":
                email = field_text(entry.get("approver"))
                if email:
                    break
    return Decision(state, at if state != "pending" else None, email)


def _principal(me: dict[str, Any]) -> str:
    email, account = me.get("emailAddress"), me.get("accountId")
    if email and account:
        return f"{email} (accountId {account})"
    return str(email or account or me.get("displayName") or "unknown")


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
