"""A local emulator of the ServiceNow Table API for the ``servicenow`` integration.

Served on 127.0.0.1 (ephemeral port) in a background thread: ``GET /api/now/table/{table}`` and
``GET /api/now/table/{table}/{sys_id}`` for ``sc_req_item``, ``sysapproval_approver``,
``sys_user`` and ``sc_cat_item``, with the documented behaviour:

- ``sysparm_query``: an encoded query — conditions joined by ``^`` (AND), ``^OR``, ``^NQ``,
  ``ORDERBY``/``ORDERBYDESC``, operators ``= != > >= < <= IN NOT IN STARTSWITH ENDSWITH LIKE
  ISEMPTY ISNOTEMPTY``; dot-walked fields (``cat_item.name``) and ``variables.<name>``. Date
  literals are read in the emulator's ``time_zone`` (UTC by default). As on an instance with the
  default ``glide.invalid_query.returns_no_rows=false``, a condition on an unknown field is
  *ignored*.
- ``sysparm_fields`` (dot-walks allowed; an unknown field is left out), ``sysparm_limit``
  (default 10000), ``sysparm_offset``, ``sysparm_exclude_reference_link`` (references as
  ``{"link", "value"}`` unless true), ``sysparm_display_value=false`` (values in UTC
  ``YYYY-MM-DD HH:MM:SS``; ``true``/``all`` are not emulated: 400).
- Body ``{"result": [...]}``; headers ``X-Total-Count`` and ``Link`` (``first``, ``prev``,
  ``next``, ``last``; absolute URLs).
- Errors ``{"error": {"message", "detail"}, "status": "failure"}``: 401 on bad credentials (Basic
  ``username``/``password`` or ``Authorization: Bearer <token>``), 403 for a denied table.

Seeding (also used by the demo)::

    sn = ServiceNowEmulator("svc.accessproof", "pw").start()
    sn.add_item("RITM0010001", "AWS Access", "alice@corp.example", "2026-01-05T09:00:00Z",
                summary="AWS for Alice", target_system="aws-prod",
                approvals=[("approved", "manager@corp.example", "2026-01-05T10:00:00Z")],
                closed="2026-01-05T11:00:00Z")
    sn.add_approval("RITM0010001", "cfo@corp.example", "requested", "2026-01-05T09:05:00Z")

Faults: ``throttle_next(n, retry_after=1)`` (429 + ``Retry-After``), ``fail_next(n, status)``,
``deny_table(table)`` (403), ``hide_field(table, field)`` (field ACL: value comes back empty),
``hide_records(table, sys_ids)`` (row ACL: counted in X-Total-Count, never returned),
``repeat_next_link()``. Every request is logged in ``requests``.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import threading
import uuid
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo

from ._server import JsonHandler, LocalServer

TABLES = ("sc_req_item", "sysapproval_approver", "sys_user", "sc_cat_item")
REFERENCES = {
    ("sc_req_item", "cat_item"): "sc_cat_item",
    ("sc_req_item", "requested_for"): "sys_user",
    ("sc_req_item", "opened_by"): "sys_user",
    ("sysapproval_approver", "approver"): "sys_user",
    ("sysapproval_approver", "sysapproval"): "sc_req_item",
    ("sysapproval_approver", "document_id"): "sc_req_item",
}
DATETIME_FIELDS = {"sys_created_on", "sys_updated_on", "opened_at", "closed_at"}
DEFAULT_LIMIT = 10000
_CONDITION = re.compile(r"^([A-Za-z0-9_.]+?)(ISNOTEMPTY|ISEMPTY|NOT IN|IN|STARTSWITH|ENDSWITH|"
                        r"NOT LIKE|LIKE|!=|>=|<=|=|>|<)(.*)$", re.S)


class _ApiError(Exception):
    def __init__(self, status: int, message: str, detail: str = "",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail
        self.headers = headers or {}


def _utc(at: dt.datetime | str | None) -> dt.datetime | None:
    if at is None:
        return None
    if isinstance(at, str):
        at = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return at.astimezone(dt.timezone.utc).replace(microsecond=0)


def glide_time(at: dt.datetime | None) -> str:
    """A date-time as the Table API returns it with display_value=false (UTC)."""
    return "" if at is None else at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _sys_id(*parts: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)).hex


class ServiceNowEmulator(LocalServer):
    """The Table API on 127.0.0.1; see the module docstring."""

    def __init__(self, username: str = "svc.accessproof", password: str = "servicenow-pw", *,
                 token: str | None = None, time_zone: str = "UTC"):
        self.username, self.password, self.token = username, password, token
        self.time_zone = time_zone
        self._default_time_zone = time_zone
        self._lock = threading.RLock()
        self._tables: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TABLES}
        self._faults: list[tuple[str | None, int, dict, str]] = []
        self._denied: set[str] = set()
        self._hidden_fields: set[tuple[str, str]] = set()
        self._hidden_records: set[tuple[str, str]] = set()
        self._repeat_links = False
        self._pinned_updates: set[str] = set()
        self.requests: list[dict[str, Any]] = []

    # --- seeding ------------------------------------------------------------------------------
    def add_user(self, email: str, *, name: str | None = None, user_name: str | None = None,
                 sys_id: str | None = None) -> str:
        """A sys_user (idempotent by email); returns its sys_id."""
        with self._lock:
            for record in self._tables["sys_user"].values():
                if record["email"].casefold() == email.casefold():
                    return record["sys_id"]
            sys_id = sys_id or _sys_id("sys_user", email.casefold())
            local = email.split("@")[0]
            self._tables["sys_user"][sys_id] = {
                "sys_id": sys_id, "email": email, "user_name": user_name or local,
                "name": name or local.replace(".", " ").title(), "active": "true",
                "sys_created_on": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
                "sys_updated_on": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)}
            return sys_id

    def add_catalog_item(self, name: str, *, sys_id: str | None = None) -> str:
        """A sc_cat_item (idempotent by name); returns its sys_id."""
        with self._lock:
            for record in self._tables["sc_cat_item"].values():
                if record["name"] == name:
                    return record["sys_id"]
            sys_id = sys_id or _sys_id("sc_cat_item", name)
            self._tables["sc_cat_item"][sys_id] = {
                "sys_id": sys_id, "name": name, "active": "true",
                "sys_created_on": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
                "sys_updated_on": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)}
            return sys_id

    def add_item(self, number: str, cat_item: str, requested_for: str | None,
                 created: dt.datetime | str, summary: str = "", *,
                 target_system: str | None = None, variables: dict[str, str] | None = None,
                 approvals: Iterable[tuple] = (), closed: dt.datetime | str | None = None,
                 updated: dt.datetime | str | None = None, sys_id: str | None = None,
                 opened_by: str | None = None, fields: dict[str, Any] | None = None) -> str:
        """A requested item (RITM). ``cat_item`` is a catalog item name (created on demand),
        ``requested_for`` an email (user created on demand). ``target_system`` becomes the
        catalog variable ``target_system``. ``approvals`` = [(state, approver_email,
        updated_at)] (see ``add_approval``). Returns the RITM's sys_id."""
        created_at, closed_at = _utc(created), _utc(closed)
        sys_id = sys_id or _sys_id("sc_req_item", number)
        variables = dict(variables or {})
        if target_system is not None:
            variables.setdefault("target_system", target_system)
        with self._lock:
            record = {
                "sys_id": sys_id, "number": number,
                "cat_item": self.add_catalog_item(cat_item),
                "requested_for": self.add_user(requested_for) if requested_for else "",
                "opened_by": self.add_user(opened_by or requested_for or "requester@corp.example"),
                "short_description": summary, "sys_created_on": created_at,
                "opened_at": created_at, "closed_at": closed_at,
                "sys_updated_on": _utc(updated) or max(filter(None, (created_at, closed_at))),
                "state": "3" if closed_at else "1", "approval": "not requested",
                "active": "false" if closed_at else "true", "variables": variables,
                **(fields or {}),
            }
            self._tables["sc_req_item"][sys_id] = record
            if updated is not None:
                self._pinned_updates.add(sys_id)
        for spec in approvals:
            state, email, when = (tuple(spec) + (None,) * 3)[:3]
            self.add_approval(sys_id, email, state, when or created_at)
        return sys_id

    def add_approval(self, item: str, approver_email: str | None, state: str,
                     updated: dt.datetime | str, *, created: dt.datetime | str | None = None,
                     sys_id: str | None = None) -> str:
        """A sysapproval_approver record for ``item`` (RITM number or sys_id): ``state`` is
        requested / approved / rejected / cancelled / not_required / no_longer_required;
        ``updated`` its sys_updated_on (for a decided record: the decision time)."""
        with self._lock:
            ritm = self._find_item(item)
            updated_at = _utc(updated)
            count = sum(1 for a in self._tables["sysapproval_approver"].values()
                        if a["sysapproval"] == ritm["sys_id"])
            sys_id = sys_id or _sys_id("sysapproval_approver", ritm["sys_id"], str(count))
            self._tables["sysapproval_approver"][sys_id] = {
                "sys_id": sys_id, "sysapproval": ritm["sys_id"], "document_id": ritm["sys_id"],
                "source_table": "sc_req_item",
                "approver": self.add_user(approver_email) if approver_email else "",
                "state": state, "sys_created_on": _utc(created) or ritm["sys_created_on"],
                "sys_updated_on": updated_at, "comments": ""}
            states = [a["state"] for a in self._tables["sysapproval_approver"].values()
                      if a["sysapproval"] == ritm["sys_id"]]
            ritm["approval"] = ("rejected" if "rejected" in states else
                                "requested" if "requested" in states else
                                "approved" if "approved" in states else ritm["approval"])
            if ritm["sys_id"] not in self._pinned_updates:
                ritm["sys_updated_on"] = max(ritm["sys_updated_on"], updated_at)
            return sys_id

    def add_generated(self, count: int, start: dt.datetime | str, *,
                      cat_item: str = "Access Request", target_system: str = "aws-prod",
                      approver: str = "manager@corp.example",
                      every: dt.timedelta = dt.timedelta(hours=1),
                      approval_delay: dt.timedelta = dt.timedelta(minutes=30),
                      first_number: int = 10001) -> list[str]:
        """``count`` approved RITMs ``every`` apart, for ``user0001@corp.example``…; returns
        their numbers."""
        start = _utc(start)
        numbers = []
        for i in range(count):
            created = start + i * every
            number = f"RITM{first_number + i:07d}"
            self.add_item(number, cat_item, f"user{i + 1:04d}@corp.example", created,
                          f"Access for user {i + 1}", target_system=target_system,
                          approvals=[("approved", approver, created + approval_delay)])
            numbers.append(number)
        return numbers

    def _find_item(self, item: str) -> dict[str, Any]:
        items = self._tables["sc_req_item"]
        if item in items:
            return items[item]
        for record in items.values():
            if record["number"] == item:
                return record
        raise KeyError(f"no RITM {item!r}")

    def sys_id_of(self, number: str) -> str:
        with self._lock:
            return self._find_item(number)["sys_id"]

    # --- faults -------------------------------------------------------------------------------
    def throttle_next(self, n: int = 1, retry_after: int | str = 1,
                      table: str | None = None) -> None:
        """The next ``n`` requests (to ``table`` when given) get 429 + Retry-After."""
        with self._lock:
            self._faults += [(table, 429, {"Retry-After": str(retry_after)},
                              "Too many requests")] * n

    def fail_next(self, n: int = 1, status: int = 503, table: str | None = None) -> None:
        with self._lock:
            self._faults += [(table, status, {}, "Service unavailable")] * n

    def deny_table(self, table: str) -> None:
        """Table-level read ACL denied: 403 for every read of ``table``."""
        with self._lock:
            self._denied.add(table)

    def hide_field(self, table: str, field: str) -> None:
        """Field-level read ACL denied: the field comes back empty (dot-walks included)."""
        with self._lock:
            self._hidden_fields.add((table, field))

    def hide_records(self, table: str, sys_ids: Iterable[str]) -> None:
        """Row-level read ACL denied: counted in X-Total-Count, never returned."""
        with self._lock:
            self._hidden_records.update((table, s) for s in sys_ids)

    def repeat_next_link(self, enabled: bool = True) -> None:
        """Simulate a paging bug: every page's rel=next link points at the second page."""
        with self._lock:
            self._repeat_links = enabled

    def reset(self) -> None:
        with self._lock:
            for table in self._tables.values():
                table.clear()
            self._faults.clear()
            self._denied.clear()
            self._hidden_fields.clear()
            self._hidden_records.clear()
            self._pinned_updates.clear()
            self._repeat_links = False
            self.requests.clear()
            self.time_zone = self._default_time_zone

    def table_requests(self, table: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["table"] == table]

    # --- server -------------------------------------------------------------------------------
    def start(self) -> "ServiceNowEmulator":
        emulator = self

        class Handler(JsonHandler):
            content_type = "application/json;charset=UTF-8"

            def _serve(self):
                self.read_body()
                status, headers, payload = emulator._handle(self.command, self.path,
                                                            self.headers)
                self.send_json(status, payload, headers)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

        return self._serve(Handler, name="servicenow-emulator")

    # --- protocol -----------------------------------------------------------------------------
    def _handle(self, method: str, target: str, headers):
        parts = urlsplit(target)
        path = unquote(parts.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        match = re.fullmatch(r"/api/now/table/([A-Za-z0-9_]+)(?:/([0-9a-f]{32}))?", path)
        entry: dict[str, Any] = {"method": method, "path": path, "params": params,
                                 "table": match.group(1) if match else None, "status": 200}
        with self._lock:
            self.requests.append(entry)
        try:
            self._authenticate(headers)
            with self._lock:
                fault = next((f for f in self._faults
                              if f[0] is None or f[0] == entry["table"]), None)
                if fault:
                    self._faults.remove(fault)
            if fault:
                raise _ApiError(fault[1], fault[3], headers=fault[2])
            if match is None or method != "GET":
                raise _ApiError(400, "Requested URI does not represent any resource",
                                f"{method} {path}")
            table = match.group(1)
            if table not in self._tables:
                raise _ApiError(400, "Invalid table " + table)
            if table in self._denied:
                raise _ApiError(403, "User Not Authorized",
                                f"ACL Exception Read operation on table {table} failed")
            status, extra, payload = self._read(table, match.group(2), params)
            return status, extra, payload
        except _ApiError as err:
            entry["status"] = err.status
            return err.status, err.headers, {"error": {"message": err.message,
                                                       "detail": err.detail},
                                             "status": "failure"}

    def _authenticate(self, headers) -> None:
        auth = headers.get("Authorization") or ""
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        ok = auth == f"Basic {basic}" if self.password is not None else False
        if self.token is not None and auth == f"Bearer {self.token}":
            ok = True
        if not ok:
            raise _ApiError(401, "User Not Authenticated",
                            "Required to provide Auth information",
                            {"WWW-Authenticate": 'BASIC realm="Service-now"'})

    def _read(self, table: str, sys_id: str | None, params: dict[str, str]):
        display = params.get("sysparm_display_value", "false").lower()
        if display != "false":
            raise _ApiError(400, "sysparm_display_value=" + display + " is not emulated")
        try:
            limit = int(params.get("sysparm_limit", DEFAULT_LIMIT))
            offset = int(params.get("sysparm_offset", 0))
        except ValueError:
            raise _ApiError(400, "sysparm_limit and sysparm_offset must be integers") from None
        fields = [f for f in params.get("sysparm_fields", "").split(",") if f.strip()]
        exclude_links = params.get("sysparm_exclude_reference_link", "false").lower() == "true"
        with self._lock:
            records = list(self._tables[table].values())
            if sys_id is not None:
                records = [r for r in records if r["sys_id"] == sys_id]
                if not records:
                    raise _ApiError(404, "No Record found",
                                    "Record doesn't exist or ACL restricts the record retrieval")
                return 200, {}, {"result": self._wire(table, records[0], fields, exclude_links)}
            predicate, order = self._query(table, params.get("sysparm_query", ""))
            matches = [r for r in records if predicate(r)]
            for field, descending in reversed(order):
                matches.sort(key=lambda r, f=field: self._sort_key(table, r, f),
                             reverse=descending)
            if not order:
                matches.sort(key=lambda r: r["sys_id"])
            total = len(matches)
            page = [r for r in matches[offset:offset + limit]
                    if (table, r["sys_id"]) not in self._hidden_records]
            result = [self._wire(table, r, fields, exclude_links) for r in page]
            headers = {"X-Total-Count": str(total)}
            links = self._links(table, params, offset, limit, total)
            if links:
                headers["Link"] = links
        return 200, headers, {"result": result}

    def _links(self, table: str, params: dict[str, str], offset: int, limit: int,
               total: int) -> str:
        def link(at: int, rel: str) -> str:
            query = urlencode({**params, "sysparm_offset": at, "sysparm_limit": limit})
            return f'<{self.url}/api/now/table/{table}?{query}>;rel="{rel}"'
        if limit <= 0:
            return ""
        last = max(0, (total - 1) // limit * limit)
        out = [link(0, "first")]
        if offset > 0:
            out.append(link(max(0, offset - limit), "prev"))
        if offset + limit < total:
            out.append(link(limit if self._repeat_links else offset + limit, "next"))
        out.append(link(last, "last"))
        return ",".join(out)

    # --- fields -------------------------------------------------------------------------------
    def _get(self, table: str, record: dict[str, Any], field: str):
        """A field's stored value, following dot-walks; None for an unknown field."""
        head, _, rest = field.partition(".")
        if (table, head) in self._hidden_fields:
            return ""
        if head == "variables" and table == "sc_req_item" and rest:
            return record["variables"].get(rest, "")
        if head not in record:
            return None
        value = record[head]
        if not rest:
            return value
        ref_table = REFERENCES.get((table, head))
        if ref_table is None:
            return None
        target = self._tables[ref_table].get(value)
        if target is None:
            return ""
        if (ref_table, target["sys_id"]) in self._hidden_records:
            return ""
        return self._get(ref_table, target, rest)

    def _wire(self, table: str, record: dict[str, Any], fields: list[str],
              exclude_links: bool) -> dict[str, Any]:
        names = fields or [k for k in record if k != "variables"]
        out: dict[str, Any] = {}
        for name in names:
            value = self._get(table, record, name)
            if value is None:
                continue                         # unknown field: left out
            if isinstance(value, dt.datetime):
                value = glide_time(value)
            ref_table = REFERENCES.get((table, name))
            if ref_table and value and not exclude_links:
                value = {"link": f"{self.url}/api/now/table/{ref_table}/{value}",
                         "value": value}
            out[name] = value
        return out

    # --- encoded queries ----------------------------------------------------------------------
    def _query(self, table: str, query: str):
        groups: list[list[list[Callable]]] = [[]]      # NQ groups → AND terms → OR alternatives
        order: list[tuple[str, bool]] = []
        for part in query.split("^") if query else []:
            if part == "EQ":
                break
            if part.startswith("ORDERBYDESC"):
                order.append((part[11:], True))
            elif part.startswith("ORDERBY"):
                order.append((part[7:], False))
            elif part.startswith("NQ"):
                groups.append([])
                if part[2:]:
                    groups[-1].append([self._condition(table, part[2:])])
            elif part.startswith("OR") and groups[-1]:
                groups[-1][-1].append(self._condition(table, part[2:]))
            elif part:
                groups[-1].append([self._condition(table, part)])

        def predicate(record):
            return any(all(any(alt(record) for alt in term) for term in group)
                       for group in groups)
        return predicate, order

    def _condition(self, table: str, text: str) -> Callable[[dict], bool]:
        match = _CONDITION.match(text)
        if not match:
            return lambda record: True                    # invalid: ignored, as on an instance
        field, op, value = match.groups()
        probe = self._field_exists(table, field)
        if not probe:
            return lambda record: True                    # unknown field: ignored
        leaf = field.rsplit(".", 1)[-1]
        is_time = leaf in DATETIME_FIELDS

        def literal(text: str):
            return self._time_literal(text) if is_time else text.casefold()

        def actual(record):
            value = self._get(table, record, field)
            if value in (None, ""):
                return None
            return value if is_time else str(value).casefold()

        if op == "ISEMPTY":
            return lambda r: actual(r) is None
        if op == "ISNOTEMPTY":
            return lambda r: actual(r) is not None
        if op in ("IN", "NOT IN"):
            values = {literal(v) for v in value.split(",")}
            negate = op == "NOT IN"
            return lambda r: (actual(r) in values) != negate
        if op in ("STARTSWITH", "ENDSWITH", "LIKE", "NOT LIKE"):
            needle = value.casefold()
            test = {"STARTSWITH": lambda a: a.startswith(needle),
                    "ENDSWITH": lambda a: a.endswith(needle),
                    "LIKE": lambda a: needle in a,
                    "NOT LIKE": lambda a: needle not in a}[op]
            return lambda r: actual(r) is not None and test(str(actual(r)))
        target = literal(value)
        compare = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b,
                   ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
                   "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}[op]
        if op == "!=":
            return lambda r: actual(r) is None or compare(actual(r), target)
        return lambda r: actual(r) is not None and compare(actual(r), target)

    def _field_exists(self, table: str, field: str) -> bool:
        head, _, rest = field.partition(".")
        sample = {"sc_req_item": ("sys_id number cat_item requested_for opened_by "
                                  "short_description sys_created_on opened_at closed_at "
                                  "sys_updated_on state approval active variables"),
                  "sysapproval_approver": ("sys_id sysapproval document_id source_table "
                                           "approver state sys_created_on sys_updated_on "
                                           "comments"),
                  "sys_user": "sys_id email user_name name active sys_created_on "
                              "sys_updated_on",
                  "sc_cat_item": "sys_id name active sys_created_on sys_updated_on"}[table]
        if head not in sample.split():
            return False
        if not rest or (table == "sc_req_item" and head == "variables"):
            return True
        ref_table = REFERENCES.get((table, head))
        return ref_table is not None and self._field_exists(ref_table, rest)

    def _time_literal(self, text: str) -> dt.datetime:
        zone = ZoneInfo(self.time_zone)
        text = text.strip()
        for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
            try:
                local = dt.datetime.strptime(text, fmt)
            except ValueError:
                continue
            return local.replace(tzinfo=zone).astimezone(dt.timezone.utc)
        raise _ApiError(400, f"Invalid date-time value {text!r} in sysparm_query")

    def _sort_key(self, table: str, record: dict[str, Any], field: str):
        value = self._get(table, record, field)
        if isinstance(value, dt.datetime):
            return (1, value.timestamp(), record["sys_id"])
        return (0 if value in (None, "") else 1, str(value or ""), record["sys_id"])
