"""ServiceNow: requested items (RITMs) and their approvals over the Table API (DESIGN §3, §9).

Calls, plain HTTPS with Basic auth (user + password) or an OAuth bearer token:

- ``GET /api/now/table/sc_req_item`` — the configured encoded query bounded by the collection
  window, ``ORDERBYsys_created_on`` (new records land at the end, so offset paging does not skip),
  ``sysparm_fields`` listing exactly what is mapped, offset paging by following the ``Link:
  <…>;rel="next"`` header (a repeated link is an error, a link to another host is refused).
- ``GET /api/now/table/sysapproval_approver`` — the approvals of the collected RITMs in bulk
  (``sysapprovalIN<sys_id,…>``, 100 ids per query), paged the same way. Approval time is the
  approved record's ``sys_updated_on``; the approver's email comes from the ``approver.email``
  dot-walk (read access to ``sys_user`` needed) — never from a field of the RITM.

``sysparm_display_value=false``: date-times then come back as UTC ``YYYY-MM-DD HH:MM:SS`` (display
values are in the account's own zone and format) and choices as their stable values; names are
read through dot-walked fields instead (``cat_item.name``, ``requested_for.email``).
``sysparm_exclude_reference_link=true`` makes references plain sys_ids.

Window and time zone: whether an instance reads a date literal in an encoded query as UTC or in the
account's time zone is not something the collector can rely on, so the bounds are written in UTC
and widened by 14 hours (the largest UTC offset) on each side. The query always covers
[since, until]; the extra records are harmless (tickets are deduplicated by key downstream).
"""

from __future__ import annotations

import collections
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

from collector.config import Secret, SourceConfig
from collector.errors import SourceError
from collector.http import RetryPolicy, make_session, redact
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
    same_origin,
    secret,
    ticket_window,
    tickets_frame,
    whole_number,
)

TABLE_PATH = "/api/now/table/{table}"
ITEMS = "sc_req_item"
APPROVALS = "sysapproval_approver"
ITEM_FIELDS = ("sys_id", "number", "cat_item", "cat_item.name", "sys_created_on",
               "sys_updated_on", "closed_at", "short_description")
APPROVAL_FIELDS = ("sys_id", "sysapproval", "approver", "approver.email", "state",
                   "sys_created_on", "sys_updated_on")
APPROVAL_CHUNK = 100          # sys_ids per IN query: ~3.3 KB of URL
FIELDS = {
    "subject_email": "RITM field (dot-walk allowed) holding the subject's email; default "
                     "requested_for.email",
    "target_system": "RITM field holding the target system, e.g. variables.target_system or "
                     "cat_item.name",
}
STATES = {"approved": "approved", "rejected": "rejected", "requested": "pending",
          "not requested": "pending", "not_requested": "pending",
          # withdrawn or superseded records decide nothing
          "cancelled": "ignored", "not_required": "ignored", "no_longer_required": "ignored",
          "duplicate": "ignored"}
WINDOW_MARGIN = dt.timedelta(hours=14)
AUTH_HINT = ("check 'username' and 'password' (Basic auth) or 'token' (OAuth bearer); the "
             "account must be allowed web service access")


def _denied(table: str) -> str:
    return (f"the account needs read access to table {table} (a role granting its read ACLs, "
            f"fields included)")


@dataclass(frozen=True)
class Settings:
    url: str
    username: str | Secret | None
    password: Secret | None
    token: Secret | None
    query: str
    fields: dict[str, str]
    kinds: dict[str, str]
    max_attempts: int = 6
    backfill_days: int = DEFAULT_BACKFILL_DAYS
    page_size: int = 500
    ca_bundle: str | None = None

    @classmethod
    def from_source(cls, source: SourceConfig) -> "Settings":
        token = secret(source, "token", required=False)
        username = plain_or_secret(source, "username", required=False)
        password = secret(source, "password", required=False)
        if token is not None and (username is not None or password is not None):
            raise source.error("token", "give either 'token' or 'username' + 'password', not "
                                        "both")
        if token is None and (username is None or password is None):
            raise source.error("username" if username is None else "password",
                               "is required (Basic auth needs 'username' and 'password'; or "
                               "give 'token' for OAuth bearer auth)")
        return cls(
            url=base_url(source), username=username, password=password, token=token,
            query=_query(source),
            fields=fields_mapping(source, FIELDS, ("subject_email", "target_system"),
                                  {"subject_email": "requested_for.email"}),
            kinds=kinds_mapping(source, "catalog item names or sys_ids"),
            max_attempts=whole_number(source, "max_attempts", 6, 1, 20),
            backfill_days=whole_number(source, "backfill_days", DEFAULT_BACKFILL_DAYS, 1,
                                       MAX_BACKFILL_DAYS),
            page_size=whole_number(source, "page_size", 500, 1, 10000),
            ca_bundle=ca_bundle(source))

    @property
    def item_fields(self) -> list[str]:
        return list(dict.fromkeys([*ITEM_FIELDS, self.fields["subject_email"],
                                   self.fields["target_system"]]))


def _query(source: SourceConfig) -> str:
    value = source.options.get("query", "")
    if not isinstance(value, str):
        raise source.error("query", "must be an encoded query string, e.g. "
                                    "'cat_item.category.title=Access'")
    query = value.strip().strip("^")
    query = re.sub(r"\^?EQ$", "", query).strip("^")
    if re.search(r"(^|\^)NQ", query):
        raise source.error("query", "must not contain ^NQ (a new query would escape the "
                                    "collection window)")
    if re.search(r"(^|\^)(ORDERBY|GROUPBY|EQ)", query):
        raise source.error("query", "must not contain ORDERBY/GROUPBY/EQ (the collector orders "
                                    "and bounds the query itself)")
    return query


class ServiceNow(Integration):
    type = "servicenow"
    title = "ServiceNow"
    tables = ("tickets",)
    # Records are kept by ServiceNow; there is no event history that expires.
    log_retention_days = None
    default_backfill_days = DEFAULT_BACKFILL_DAYS
    options = {
        "url": "instance URL, e.g. https://corp.service-now.com (endpoint override for tests)",
        "username": "user for Basic auth (with password)",
        "password": "password for Basic auth: env:NAME or file:PATH",
        "token": "OAuth bearer token instead of username/password: env:NAME or file:PATH",
        "query": "encoded query selecting the access RITMs (no ORDERBY/^NQ); the collection "
                 "window is added",
        "fields": "table: subject_email (default requested_for.email), target_system (required)",
        "kinds": "table: catalog item name or sys_id → access_request / offboarding / "
                 "role_change; other items are skipped and counted",
        "max_attempts": "HTTP attempts per request, retries on 429/5xx included (default 6)",
        "backfill_days": f"days of RITMs (by last update) the first collection pulls "
                         f"(default {DEFAULT_BACKFILL_DAYS})",
        "page_size": "records per page, sysparm_limit (1-10000, default 500)",
        "ca_bundle": "PEM file of the CA that signs the instance's certificate",
    }
    required_options = ("url", "kinds", "fields")
    permissions = (
        Permission("servicenow-role", "read sc_req_item",
                   "read ACLs on the table and the fields number, cat_item, sys_created_on, "
                   "sys_updated_on, closed_at, short_description and the configured fields "
                   "(catalog variables included)"),
        Permission("servicenow-role", "read sysapproval_approver",
                   "read ACLs on the table and sysapproval, approver, state, sys_updated_on"),
        Permission("servicenow-role", "read sys_user",
                   "read ACL on sys_user and its email field, for the dot-walks approver.email "
                   "and requested_for.email"),
        Permission("servicenow-role", "read sc_cat_item",
                   "read ACL on sc_cat_item.name, for the cat_item.name dot-walk (kinds by name)"),
        Permission("servicenow-role", "snc_platform_rest_api_access",
                   "only where the instance enforces REST API access roles; itil grants all "
                   "the reads above but also write access to tasks: prefer a custom read-only "
                   "role"),
    )

    @classmethod
    def validate(cls, source: SourceConfig) -> None:
        super().validate(source)
        Settings.from_source(source)

    def collect(self, ctx: CollectContext) -> CollectResult:
        settings = Settings.from_source(ctx.config)
        client = ServiceNowClient(ctx, settings)
        since, until = ticket_window(ctx, settings.backfill_days)
        query = window_query(settings.query, since, until)

        rows, sys_ids, unmapped = [], [], collections.Counter()
        seen: set[str] = set()
        received = 0
        for item in client.table(ITEMS, query, settings.item_fields):
            received += 1
            row, name = map_item(item, settings, source=ctx.name)
            if row is None:
                unmapped[name or "(none)"] += 1
                continue
            sys_id = field_text(item.get("sys_id"))
            if sys_id in seen:
                continue
            seen.add(sys_id)
            sys_ids.append(sys_id)
            rows.append(row)
        reported_total = client.totals.get(ITEMS)

        by_item: dict[str, list[Decision]] = collections.defaultdict(list)
        approval_records = 0
        for start in range(0, len(sys_ids), APPROVAL_CHUNK):
            chunk = sys_ids[start:start + APPROVAL_CHUNK]
            approval_query = f"sysapprovalIN{','.join(chunk)}^ORDERBYsys_created_on"
            for approval in client.table(APPROVALS, approval_query, list(APPROVAL_FIELDS)):
                approval_records += 1
                by_item[field_text(approval.get("sysapproval")) or ""].append(
                    approval_decision(approval))

        hidden_approver = []
        for row, sys_id in zip(rows, sys_ids, strict=True):
            row["status"], row["approved_at"], row["approver_email"] = decide(by_item[sys_id])
            if row["status"] == "approved" and not row["approver_email"]:
                hidden_approver.append(row["key"])

        tickets = tickets_frame(rows, source=ctx.name)
        limitations = []
        if reported_total is not None and received < reported_total:
            limitations.append(
                f"ServiceNow counted {reported_total} RITM(s) for the query (X-Total-Count) but "
                f"returned {received}: rows hidden by ACLs, or removed during the collection")
        if hidden_approver:
            limitations.append(
                f"{len(hidden_approver)} approved RITM(s) have no approver email (read access to "
                f"sys_user.email missing, or an approver without email); self-approval cannot be "
                f"judged for them: {', '.join(hidden_approver[:20])}")
        ctx.log.info("servicenow: %d RITM(s) read, %d kept, %d skipped (unmapped items), %d "
                     "approval record(s), %d request(s)", received, len(tickets),
                     sum(unmapped.values()), approval_records, client.http.count)
        return CollectResult(
            tables={"tickets": tickets},
            principal=_principal(settings),
            instances=[settings.url],
            limitations=limitations,
            extra={
                "window": {"start": _iso(since), "end": _iso(until)},
                "query": query,
                "records_received": received,
                "records_reported": reported_total,
                "tickets": len(tickets),
                "kinds": dict(collections.Counter(r["kind"] for r in rows)),
                "statuses": dict(collections.Counter(r["status"] for r in rows)),
                "skipped_unmapped_items": dict(unmapped),
                "approval_records": approval_records,
                "pages": dict(client.pages),
                "requests": client.http.count,
            })

    def check(self, ctx: CollectContext) -> list[str]:
        settings = Settings.from_source(ctx.config)
        client = ServiceNowClient(ctx, settings, record_pages=False)
        problems = []
        for table, fields in ((ITEMS, ["sys_id", "number"]),
                              (APPROVALS, ["sys_id", "state", "approver.email"]),
                              ("sys_user", ["sys_id", "email"]),
                              ("sc_cat_item", ["sys_id", "name"])):
            try:
                next(iter(client.table(table, "", fields, limit=1, one_page=True)), None)
            except SourceError as exc:
                if client.http.last_status == 401:
                    return [str(exc)]
                problems.append(str(exc))
        return problems


class ServiceNowClient:
    """The Table API calls of one collection: one session (shared retry policy), Link paging,
    raw recording."""

    def __init__(self, ctx: CollectContext, settings: Settings, *, record_pages: bool = True):
        self.ctx, self.settings, self.record_pages = ctx, settings, record_pages
        session = make_session(ca_bundle=existing_ca_bundle(ctx.config, settings.ca_bundle),
                               policy=RetryPolicy(max_attempts=settings.max_attempts))
        if settings.token is not None:
            session.headers["Authorization"] = f"Bearer {settings.token.reveal()}"
        else:
            session.auth = (reveal(settings.username), settings.password.reveal())
        session.headers["Accept"] = "application/json"
        self.http = Fetcher(session, ctx, auth_hint=AUTH_HINT)
        self.pages: collections.Counter = collections.Counter()
        self.totals: dict[str, int] = {}

    def table(self, table: str, query: str, fields: list[str], *, limit: int | None = None,
              one_page: bool = False) -> Iterator[dict[str, Any]]:
        path = TABLE_PATH.format(table=table)
        first_url = self.settings.url + path
        params = {"sysparm_query": query, "sysparm_fields": ",".join(fields),
                  "sysparm_limit": limit or self.settings.page_size, "sysparm_offset": 0,
                  "sysparm_display_value": "false", "sysparm_exclude_reference_link": "true"}
        if not query:
            del params["sysparm_query"]
        first = True

        def fetch(next_url):
            nonlocal first
            url = next_url or first_url
            body = self.http.json(url, params=params if next_url is None else None,
                                  what=f"GET {path}", permission_hint=_denied(table))
            response = self.http.last
            result = body.get("result")
            if not isinstance(result, list):
                raise SourceError(self.ctx.name, f"GET {path}: the response has no 'result' "
                                                 "list")
            total = response.headers.get("X-Total-Count")
            if first and total is not None and total.isdigit():
                self.totals[table] = self.totals.get(table, 0) + int(total)
            first = False
            self.pages[table] += 1
            if self.record_pages:
                record(self.ctx, f"servicenow.{table}", endpoint=first_url,
                       call={"method": "GET", "url": _path_query(response.url)},
                       body=body, records=len(result), parameters=params,
                       headers={k: response.headers[k] for k in ("X-Total-Count", "Link")
                                if k in response.headers})
            return result, (response.links.get("next") or {}).get("url")

        def next_url(page):
            link = page[1]
            if one_page or not link:
                return None
            if not same_origin(link, self.settings.url):
                raise SourceError(self.ctx.name, f"GET {path}: the next-page link points to "
                                                 f"{redact(link)}, not to {self.settings.url}; "
                                                 "refused (credentials would follow it)")
            return link

        for result, _ in TokenPaginator(fetch, next_url, source=self.ctx.name,
                                        request=f"GET {path} (Link rel=next)"):
            yield from result


# --- pure mapping (no I/O) ----------------------------------------------------------------------

def window_query(query: str, since: dt.datetime, until: dt.datetime) -> str:
    """The configured encoded query bounded by [since, until] (UTC, widened: module docstring),
    ordered by creation so that offset paging does not skip records."""
    low = (since - WINDOW_MARGIN).astimezone(dt.timezone.utc)
    high = (until + WINDOW_MARGIN).astimezone(dt.timezone.utc)
    parts = [query] if query else []
    parts += [f"sys_updated_on>={low:%Y-%m-%d %H:%M:%S}",
              f"sys_updated_on<={high:%Y-%m-%d %H:%M:%S}", "ORDERBYsys_created_on"]
    return "^".join(parts)


def map_item(item: dict[str, Any], settings: Settings, *, source: str) \
        -> tuple[dict[str, Any] | None, str | None]:
    """A RITM → a ``tickets`` row without its approval columns, or (None, catalog item) when
    its catalog item maps to no kind."""
    number, sys_id = field_text(item.get("number")), field_text(item.get("sys_id"))
    if not number or not sys_id:
        raise SourceError(source, f"GET {TABLE_PATH.format(table=ITEMS)} returned a record "
                                  "without number or sys_id; is sysparm_fields honoured?")
    name, cat_id = field_text(item.get("cat_item.name")), field_text(item.get("cat_item"))
    kind = None
    for candidate in (name, cat_id):
        if candidate:
            kind = settings.kinds.get(candidate.casefold())
            if kind:
                break
    if kind is None:
        return None, name or cat_id
    return {
        "system": "servicenow", "key": number, "kind": kind,
        "subject_email": field_text(item.get(settings.fields["subject_email"])),
        "target_system": field_text(item.get(settings.fields["target_system"])),
        "requested_at": parse_time(field_text(item.get("sys_created_on"))),
        "approved_at": None, "approver_email": None, "status": "pending",
        "resolved_at": parse_time(field_text(item.get("closed_at"))),
        "url": f"{settings.url}/sc_req_item.do?sys_id={sys_id}",
        "summary": field_text(item.get("short_description")),
    }, name or cat_id


def approval_decision(approval: dict[str, Any]) -> Decision:
    """One ``sysapproval_approver`` record → a ``Decision``: time from the approved record's
    ``sys_updated_on``, approver from ``approver.email``. Unknown states count as pending."""
    state = STATES.get(str(field_text(approval.get("state")) or "").lower(), "pending")
    at = parse_time(field_text(approval.get("sys_updated_on"))) \
        if state in ("approved", "rejected") else None
    email = field_text(approval.get("approver.email")) if state == "approved" else None
    return Decision(state, at, email)


def _path_query(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _principal(settings: Settings) -> str:
    if settings.token is not None:
        return "OAuth bearer token"
    return str(reveal(settings.username))


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
