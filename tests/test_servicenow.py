"""servicenow against the local Table API emulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import time
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from accessproof_fakes.servicenow import ServiceNowEmulator

from collector.config import Secret, SourceConfig
from collector.errors import ConfigError, SourceError
from collector.integration import CollectContext
from collector.store import RawRecorder
from integrations.servicenow import ServiceNow, window_query
from integrations.tickets import same_origin

NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=dt.timezone.utc)
SINCE = NOW - dt.timedelta(days=30)
USER, PASSWORD, TOKEN = "svc.accessproof", "sn-test-password-7c1", "sn-test-bearer-91ad"
PASSWORD_ENV, TOKEN_ENV = "ACCESSPROOF_TEST_SN_PASSWORD", "ACCESSPROOF_TEST_SN_TOKEN"
KINDS = {"AWS Access": "access_request", "Leaver": "offboarding", "Change Role": "role_change"}
FIELDS = {"target_system": "variables.target_system"}


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with ServiceNowEmulator(USER, PASSWORD, token=TOKEN) as emulator:
        yield emulator


@pytest.fixture
def sn(server, monkeypatch):
    server.reset()
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return server


def source(sn, tmp_path, name="servicenow", **options) -> SourceConfig:
    options = {"url": sn.url, "username": USER,
               "password": Secret(f"env:{PASSWORD_ENV}", tmp_path),
               "fields": dict(FIELDS), "kinds": dict(KINDS), "max_attempts": 3, **options}
    options = {k: v for k, v in options.items() if v is not None}
    return SourceConfig(name=name, type="servicenow", options=options,
                        section=f"sources '{name}'", file=str(tmp_path / "config.toml"))


def context(src, tmp_path, *, since=SINCE, first=False) -> CollectContext:
    return CollectContext(name=src.name, config=src, now=NOW, events_since=since,
                          events_until=NOW, raw=RawRecorder(tmp_path / "raw"),
                          log=logging.getLogger("test.servicenow"), first_collection=first)


def run(sn, tmp_path, *, since=SINCE, first=False, **options):
    src = source(sn, tmp_path, **options)
    ServiceNow.validate(src)
    ctx = context(src, tmp_path, since=since, first=first)
    try:
        return ServiceNow().collect(ctx), ctx.raw
    finally:
        ctx.raw.close()


def tickets(result) -> dict[str, dict]:
    return {row["key"]: row for row in result.tables["tickets"].to_dict("records")}


def raw_pages(raw: RawRecorder, request: str) -> list[dict]:
    with gzip.open(raw.raw_dir / f"{request}.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def item(sn, number, cat="AWS Access", subject=None, created="2026-03-02T09:00:00Z", **kw):
    return sn.add_item(number, cat, subject or f"{number.lower()}@corp.example", created,
                       kw.pop("summary", f"Request {number}"),
                       target_system=kw.pop("target_system", "aws-prod"), **kw)


# --- contract -----------------------------------------------------------------------------------

def test_declares_tables_options_and_permissions():
    assert ServiceNow.type == "servicenow" and ServiceNow.tables == ("tickets",)
    assert ServiceNow.log_retention_days is None
    assert set(ServiceNow.options) == {"url", "username", "password", "token", "query",
                                       "fields", "kinds", "max_attempts", "backfill_days",
                                       "page_size", "ca_bundle"}
    assert {p.system for p in ServiceNow.permissions} == {"servicenow-role"}
    names = {p.name for p in ServiceNow.permissions}
    assert {"read sc_req_item", "read sysapproval_approver", "read sys_user"} <= names


@pytest.mark.parametrize("change, key", [
    ({"token": Secret("env:X", None)}, "token"),                   # token and basic together
    ({"password": None}, "password"),
    ({"username": None, "password": None}, "username"),
    ({"password": "literal-password"}, "password"),
    ({"username": None, "password": None, "token": "literal-token"}, "token"),
    ({"query": "active=true^NQactive=false"}, "query"),
    ({"query": "active=true^ORDERBYnumber"}, "query"),
    ({"query": 5}, "query"),
    ({"kinds": {"AWS Access": "provisioning"}}, "AWS Access"),
    ({"fields": {}}, "target_system"),
    ({"fields": {**FIELDS, "approver_email": "u_approver"}}, "approver_email"),
    ({"page_size": 0}, "page_size"),
    ({"url": "http://corp.service-now.com"}, "url"),
    ({"instance": "corp"}, "instance"),
])
def test_bad_options_are_config_errors(sn, tmp_path, change, key):
    with pytest.raises(ConfigError) as err:
        ServiceNow.validate(source(sn, tmp_path, **change))
    assert err.value.key == key and "config.toml" in str(err.value)


def test_query_may_end_with_eq():
    from integrations.servicenow import Settings
    src = SourceConfig(name="s", type="servicenow", section="s", file="c.toml", options={
        "url": "https://x.service-now.com", "token": Secret("env:T", None),
        "query": "active=true^EQ", "fields": FIELDS, "kinds": KINDS})
    assert Settings.from_source(src).query == "active=true"


# --- mapping ------------------------------------------------------------------------------------

def test_maps_every_kind_with_approval_from_the_approval_record(sn, tmp_path):
    aws = item(sn, "RITM0000001", "AWS Access", "alice@corp.example",
               summary="AWS for Alice", closed="2026-03-03T08:00:00Z",
               approvals=[("approved", "mgr@corp.example", "2026-03-02T10:15:00Z")],
               # editable fields of the RITM claiming other approval facts: ignored
               fields={"u_approved_on": "2026-02-01 00:00:00", "approval_set": "2026-02-01 "
                       "00:00:00", "u_approver": "alice@corp.example"})
    item(sn, "RITM0000002", "Leaver", "bob@corp.example", target_system="workspace",
         approvals=[("approved", "hr@corp.example", "2026-03-04T09:30:00Z")])
    leaver_id = sn.add_catalog_item("Role change (v2)")
    item(sn, "RITM0000003", "Role change (v2)", "carol@corp.example", target_system="entra",
         approvals=[("approved", "cfo@corp.example", "2026-03-05T12:00:00Z")])
    item(sn, "RITM0000004", "New laptop", "dave@corp.example")
    item(sn, "RITM0000005", "New laptop", "erin@corp.example")

    kinds = {**KINDS, leaver_id: "role_change"}             # by sys_id as well as by name
    result, _ = run(sn, tmp_path, kinds=kinds)
    rows = tickets(result)
    assert set(rows) == {"RITM0000001", "RITM0000002", "RITM0000003"}
    assert rows["RITM0000001"] == {
        "system": "servicenow", "key": "RITM0000001", "kind": "access_request",
        "subject_email": "alice@corp.example", "target_system": "aws-prod",
        "requested_at": utc("2026-03-02T09:00:00Z"), "approved_at": utc("2026-03-02T10:15:00Z"),
        "approver_email": "mgr@corp.example", "status": "approved",
        "resolved_at": utc("2026-03-03T08:00:00Z"),
        "url": f"{sn.url}/sc_req_item.do?sys_id={aws}", "summary": "AWS for Alice"}
    assert rows["RITM0000002"]["kind"] == "offboarding"
    assert rows["RITM0000003"]["kind"] == "role_change"
    assert result.extra["skipped_unmapped_items"] == {"New laptop": 2}
    # approvals are asked for the kept RITMs only, in one query
    (approvals,) = sn.table_requests("sysapproval_approver")
    query = approvals["params"]["sysparm_query"]
    assert query.startswith("sysapprovalIN") and query.count(",") == 2
    assert result.principal == USER and result.instances == [sn.url]


def test_states_rejected_requested_and_several_approvers(sn, tmp_path):
    specs = {
        "RITM0000001": [("rejected", "mgr@corp.example", "2026-03-02T10:00:00Z")],
        "RITM0000002": [("requested", "mgr@corp.example", "2026-03-02T09:01:00Z")],
        "RITM0000003": [],
        "RITM0000004": [("approved", "mgr@corp.example", "2026-03-02T10:00:00Z"),
                        ("requested", "cfo@corp.example", "2026-03-02T10:00:00Z")],
        "RITM0000005": [("approved", "mgr@corp.example", "2026-03-02T10:00:00Z"),
                        ("approved", "cfo@corp.example", "2026-03-03T16:00:00Z")],
        # group approval, "anyone": the others no longer required
        "RITM0000006": [("no_longer_required", "a@corp.example", "2026-03-02T11:00:00Z"),
                        ("approved", "b@corp.example", "2026-03-02T11:00:00Z"),
                        ("cancelled", "c@corp.example", "2026-03-02T12:00:00Z")],
        "RITM0000007": [("rejected", "mgr@corp.example", "2026-03-02T10:00:00Z"),
                        ("approved", "mgr2@corp.example", "2026-03-04T10:00:00Z")],
        "RITM0000008": [("not requested", "cfo@corp.example", "2026-03-02T09:00:00Z"),
                        ("approved", "mgr@corp.example", "2026-03-02T10:00:00Z")],
    }
    for number, approvals in specs.items():
        item(sn, number, approvals=approvals)
    rows = tickets(run(sn, tmp_path)[0])
    status = {k: (r["status"], None if pd.isna(r["approved_at"]) else r["approved_at"],
                  r["approver_email"] if isinstance(r["approver_email"], str) else None)
              for k, r in rows.items()}
    assert status == {
        "RITM0000001": ("rejected", None, None),
        "RITM0000002": ("pending", None, None),
        "RITM0000003": ("pending", None, None),
        "RITM0000004": ("pending", None, None),
        "RITM0000005": ("approved", utc("2026-03-03T16:00:00Z"), "cfo@corp.example"),
        "RITM0000006": ("approved", utc("2026-03-02T11:00:00Z"), "b@corp.example"),
        "RITM0000007": ("approved", utc("2026-03-04T10:00:00Z"), "mgr2@corp.example"),
        "RITM0000008": ("pending", None, None),
    }


def test_self_approval_passes_through_unjudged(sn, tmp_path):
    item(sn, "RITM0000001", subject="alice@corp.example",
         approvals=[("approved", "alice@corp.example", "2026-03-02T09:01:00Z")])
    row = tickets(run(sn, tmp_path)[0])["RITM0000001"]
    assert row["status"] == "approved"
    assert row["approver_email"] == row["subject_email"] == "alice@corp.example"


def test_configured_fields_variables_and_dot_walks(sn, tmp_path):
    item(sn, "RITM0000001", subject="opener@corp.example", cat="AWS Access",
         variables={"subject_email": "new.hire@corp.example"})
    fields = {"subject_email": "variables.subject_email", "target_system": "cat_item.name"}
    row = tickets(run(sn, tmp_path, fields=fields)[0])["RITM0000001"]
    assert (row["subject_email"], row["target_system"]) == ("new.hire@corp.example",
                                                            "AWS Access")
    sent = sn.table_requests("sc_req_item")[0]["params"]["sysparm_fields"].split(",")
    assert {"variables.subject_email", "cat_item.name", "number", "sys_created_on",
            "sys_updated_on", "closed_at"} <= set(sent)
    params = sn.table_requests("sc_req_item")[0]["params"]
    assert params["sysparm_display_value"] == "false"
    assert params["sysparm_exclude_reference_link"] == "true"


def test_hidden_emails_are_limitations_not_guesses(sn, tmp_path):
    item(sn, "RITM0000001", approvals=[("approved", "mgr@corp.example",
                                        "2026-03-02T10:00:00Z")])
    sn.hide_field("sys_user", "email")
    result, _ = run(sn, tmp_path)
    row = tickets(result)["RITM0000001"]
    assert row["status"] == "approved" and pd.isna(row["approver_email"])
    assert pd.isna(row["subject_email"])
    assert any("no approver email" in text for text in result.limitations)


def test_rows_hidden_by_acls_are_stated(sn, tmp_path):
    ids = [item(sn, f"RITM000000{i}") for i in range(1, 4)]
    sn.hide_records("sc_req_item", ids[:1])
    result, _ = run(sn, tmp_path)
    assert len(result.tables["tickets"]) == 2
    assert result.extra["records_reported"] == 3 and result.extra["records_received"] == 2
    assert any("X-Total-Count" in text for text in result.limitations)


# --- the window ---------------------------------------------------------------------------------

def test_query_is_bounded_by_the_window_whatever_zone_the_instance_reads(sn, tmp_path):
    sn.time_zone = "America/Los_Angeles"          # the literal is read as PST (UTC-8)
    since = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    item(sn, "RITM0000001", created="2026-03-01T14:00:00Z")     # 2 h into the window
    item(sn, "RITM0000002", created="2026-02-28T16:00:00Z")     # 20 h before: outside
    item(sn, "RITM0000003", created="2025-12-01T09:00:00Z",     # old, updated in the window
         updated="2026-03-10T09:00:00Z")
    item(sn, "RITM0000004", created="2026-03-05T09:00:00Z", closed="2026-03-06T09:00:00Z")
    result, _ = run(sn, tmp_path, since=since, query="active=true")
    (request,) = sn.table_requests("sc_req_item")
    assert request["params"]["sysparm_query"] == (
        "active=true^sys_updated_on>=2026-02-28 22:00:00^sys_updated_on<=2026-03-21 02:00:00"
        "^ORDERBYsys_created_on")
    # the configured query applies (RITM4 is closed, so inactive)
    assert set(tickets(result)) == {"RITM0000001", "RITM0000003"}
    assert result.extra["window"] == {"start": "2026-03-01T12:00:00Z",
                                      "end": "2026-03-20T12:00:00Z"}


@pytest.mark.parametrize("first, options, since", [
    (True, {}, NOW - dt.timedelta(days=400)),
    (True, {"backfill_days": 45}, NOW - dt.timedelta(days=45)),
    (False, {}, SINCE),
])
def test_first_collection_backfills(sn, tmp_path, first, options, since):
    result, _ = run(sn, tmp_path, first=first, **options)
    low = (since - dt.timedelta(hours=14)).strftime("%Y-%m-%d %H:%M:%S")
    assert f"sys_updated_on>={low}" in \
        sn.table_requests("sc_req_item")[0]["params"]["sysparm_query"]
    assert result.extra["window"]["start"] == since.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_window_query_without_a_configured_query():
    since = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert window_query("", since, since) == (
        "sys_updated_on>=2025-12-31 10:00:00^sys_updated_on<=2026-01-01 14:00:00"
        "^ORDERBYsys_created_on")


# --- paging, bulk approvals, raw pages ----------------------------------------------------------

def test_pages_by_link_header_and_fetches_approvals_in_bulk(sn, tmp_path):
    numbers = sn.add_generated(230, "2026-03-01T00:00:00Z", cat_item="AWS Access",
                               every=dt.timedelta(minutes=5))
    result, raw = run(sn, tmp_path, page_size=100)
    assert sorted(tickets(result)) == sorted(numbers)
    assert set(tickets(result)[numbers[0]].values()) >= {"approved", "manager@corp.example"}

    items = sn.table_requests("sc_req_item")
    assert [r["params"]["sysparm_offset"] for r in items] == ["0", "100", "200"]
    pages = raw_pages(raw, "servicenow.sc_req_item")
    assert [len(p["body"]["response"]["result"]) for p in pages] == [100, 100, 30]
    # each request followed the rel="next" link of the page before it
    for page, following in zip(pages, items[1:]):
        link = page["body"]["headers"]["Link"]
        nxt = [part for part in link.split(",") if 'rel="next"' in part][0]
        offset = parse_qs(urlsplit(nxt.split(">")[0].strip("<")).query)["sysparm_offset"]
        assert offset == [following["params"]["sysparm_offset"]]
        assert following["params"]["sysparm_query"] == items[0]["params"]["sysparm_query"]
    assert "next" not in pages[-1]["body"]["headers"]["Link"]
    assert all(p["body"]["headers"]["X-Total-Count"] == "230" for p in pages)

    # approvals: 230 RITMs → 3 IN-queries of ≤100 sys_ids, not one call per ticket
    approvals = sn.table_requests("sysapproval_approver")
    assert len(approvals) == 3
    assert [r["params"]["sysparm_query"].split("^")[0].count(",") + 1 for r in approvals] == \
        [100, 100, 30]
    assert len(sn.requests) == 3 + 3
    recorded = raw.requests
    assert recorded["servicenow.sc_req_item"]["pages"] == 3
    assert recorded["servicenow.sc_req_item"]["records"] == 230
    assert recorded["servicenow.sysapproval_approver"]["records"] == 230
    assert result.extra["records_reported"] == 230
    assert PASSWORD not in json.dumps(recorded)


def test_approval_queries_are_paged_too(sn, tmp_path):
    for i in range(1, 4):
        item(sn, f"RITM000000{i}", approvals=[
            ("approved", "mgr@corp.example", "2026-03-02T10:00:00Z"),
            ("no_longer_required", "alt@corp.example", "2026-03-02T10:00:00Z")])
    result, raw = run(sn, tmp_path, page_size=2)
    approvals = sn.table_requests("sysapproval_approver")
    assert [r["params"]["sysparm_offset"] for r in approvals] == ["0", "2", "4"]
    assert len(raw_pages(raw, "servicenow.sysapproval_approver")) == 3
    assert result.extra["statuses"] == {"approved": 3}


def test_repeated_next_link_is_an_error_and_the_pages_are_kept(sn, tmp_path):
    sn.add_generated(7, "2026-03-01T00:00:00Z", cat_item="AWS Access")
    sn.repeat_next_link()
    with pytest.raises(SourceError) as err:
        run(sn, tmp_path, page_size=2)
    assert "a second time" in str(err.value) and "sc_req_item" in str(err.value)
    raw = RawRecorder(tmp_path / "raw")
    # page 1 linked to offset 2, page 2 (offset 2) linked to offset 2 again: both are evidence
    assert len(raw_pages(raw, "servicenow.sc_req_item")) == 2
    assert [r["params"]["sysparm_offset"] for r in sn.table_requests("sc_req_item")] == \
        ["0", "2"]


def test_next_links_must_stay_on_the_instance():
    assert same_origin("https://corp.service-now.com/api/now/table/x?sysparm_offset=2",
                       "https://corp.service-now.com")
    assert not same_origin("https://evil.example/api/now/table/x", "https://corp.service-now.com")
    assert not same_origin("http://corp.service-now.com/x", "https://corp.service-now.com")


# --- auth, throttling and failures --------------------------------------------------------------

def test_bearer_token_auth(sn, tmp_path):
    item(sn, "RITM0000001")
    result, _ = run(sn, tmp_path, username=None, password=None,
                    token=Secret(f"env:{TOKEN_ENV}", tmp_path))
    assert set(tickets(result)) == {"RITM0000001"}


@pytest.mark.parametrize("options", [{}, {"token": True}])
def test_bad_credentials_are_a_source_error(sn, tmp_path, monkeypatch, options):
    if options:
        options = {"username": None, "password": None,
                   "token": Secret(f"env:{TOKEN_ENV}", tmp_path)}
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password-value")
    monkeypatch.setenv(TOKEN_ENV, "wrong-token-value")
    with pytest.raises(SourceError) as err:
        run(sn, tmp_path, **options)
    text = str(err.value)
    assert "401" in text and "GET /api/now/table/sc_req_item" in text and "password" in text
    assert "wrong-password-value" not in text and "wrong-token-value" not in text


def test_denied_table_names_the_read_access_needed(sn, tmp_path):
    item(sn, "RITM0000001")
    sn.deny_table("sysapproval_approver")
    with pytest.raises(SourceError) as err:
        run(sn, tmp_path)
    assert "403" in str(err.value) and "read access to table sysapproval_approver" in \
        str(err.value)


def test_429_is_retried_honouring_retry_after(sn, tmp_path):
    item(sn, "RITM0000001", approvals=[("approved", "m@corp.example", "2026-03-02T10:00:00Z")])
    sn.throttle_next(1, retry_after=1, table="sysapproval_approver")
    started = time.monotonic()
    result, raw = run(sn, tmp_path)
    assert time.monotonic() - started >= 1.0
    assert [r["status"] for r in sn.table_requests("sysapproval_approver")] == [429, 200]
    assert tickets(result)["RITM0000001"]["status"] == "approved"
    assert len(raw_pages(raw, "servicenow.sysapproval_approver")) == 1


def test_persistent_5xx_gives_up_after_max_attempts(sn, tmp_path):
    sn.fail_next(4, status=502, table="sc_req_item")
    with pytest.raises(SourceError) as err:
        run(sn, tmp_path, max_attempts=2)
    assert "502" in str(err.value) and "sc_req_item" in str(err.value)
    assert len(sn.table_requests("sc_req_item")) == 2


# --- check --------------------------------------------------------------------------------------

def test_check_reads_each_table_once_and_records_nothing(sn, tmp_path):
    ctx = context(source(sn, tmp_path), tmp_path)
    assert ServiceNow().check(ctx) == []
    assert ctx.raw.requests == {}
    assert [r["table"] for r in sn.requests] == ["sc_req_item", "sysapproval_approver",
                                                 "sys_user", "sc_cat_item"]
    assert all(r["params"]["sysparm_limit"] == "1" for r in sn.requests)


def test_check_names_each_missing_read(sn, tmp_path, monkeypatch):
    sn.deny_table("sys_user")
    sn.deny_table("sysapproval_approver")
    ctx = context(source(sn, tmp_path), tmp_path)
    problems = ServiceNow().check(ctx)
    assert len(problems) == 2
    assert "sysapproval_approver" in problems[0] and "sys_user" in problems[1]
    monkeypatch.setenv(PASSWORD_ENV, "nope")
    (problem,) = ServiceNow().check(ctx)
    assert "401" in problem
