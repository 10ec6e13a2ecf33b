"""jira against the local Jira/JSM emulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import time

import pandas as pd
import pytest
import requests
from accessproof_fakes.jira import (
    REQUEST_TYPE_FIELD,
    SUBJECT_FIELD,
    TARGET_FIELD,
    JiraEmulator,
    approval,
    option,
    user,
)

from collector.config import Secret, SourceConfig
from collector.errors import ConfigError, SourceError
from collector.integration import CollectContext
from collector.store import RawRecorder
from integrations.jira import Jira, window_jql

NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=dt.timezone.utc)
SINCE = NOW - dt.timedelta(days=30)
EMAIL, TOKEN = "compliance-bot@corp.example", "jira-test-token-3f9a"
TOKEN_ENV = "ACCESSPROOF_TEST_JIRA_API_TOKEN"
KINDS = {"Access Request": "access_request", "Offboarding": "offboarding",
         "Role Change": "role_change"}
FIELDS = {"subject_email": SUBJECT_FIELD, "target_system": TARGET_FIELD,
          "request_type": REQUEST_TYPE_FIELD}


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with JiraEmulator(EMAIL, TOKEN) as emulator:
        yield emulator


@pytest.fixture
def jira(server, monkeypatch):
    server.reset()
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return server


def source(jira, tmp_path, name="jira", **options) -> SourceConfig:
    options = {"url": jira.url, "email": EMAIL, "api_token": Secret(f"env:{TOKEN_ENV}", tmp_path),
               "jql": "project = ACCESS", "fields": dict(FIELDS), "kinds": dict(KINDS),
               "max_attempts": 3, **options}
    return SourceConfig(name=name, type="jira", options=options, section=f"sources '{name}'",
                        file=str(tmp_path / "config.toml"))


def context(src, tmp_path, *, since=SINCE, first=False) -> CollectContext:
    return CollectContext(name=src.name, config=src, now=NOW, events_since=since,
                          events_until=NOW, raw=RawRecorder(tmp_path / "raw"),
                          log=logging.getLogger("test.jira"), first_collection=first)


def run(jira, tmp_path, *, since=SINCE, first=False, **options):
    src = source(jira, tmp_path, **options)
    Jira.validate(src)
    ctx = context(src, tmp_path, since=since, first=first)
    try:
        return Jira().collect(ctx), ctx.raw
    finally:
        ctx.raw.close()


def tickets(result) -> dict[str, dict]:
    return {row["key"]: row for row in result.tables["tickets"].to_dict("records")}


def raw_pages(raw: RawRecorder, request: str) -> list[dict]:
    with gzip.open(raw.raw_dir / f"{request}.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


# --- contract -----------------------------------------------------------------------------------

def test_declares_tables_options_and_permissions():
    assert Jira.type == "jira" and Jira.tables == ("tickets",)
    assert Jira.log_retention_days is None
    assert set(Jira.options) == {"url", "email", "api_token", "jql", "fields", "kinds",
                                 "max_attempts", "backfill_days", "page_size", "ca_bundle"}
    assert {p.system for p in Jira.permissions} == {"jira-permission"}
    names = " ".join(p.name for p in Jira.permissions)
    assert "Browse projects" in names and "Service Desk agent" in names


@pytest.mark.parametrize("change, key", [
    ({"jql": "project = ACCESS ORDER BY created"}, "jql"),
    ({"jql": "  "}, "jql"),
    ({"api_token": "literal-token"}, "api_token"),
    ({"url": "http://jira.corp.example"}, "url"),
    ({"url": "corp.atlassian.net"}, "url"),
    ({"page_size": 101}, "page_size"),
    ({"backfill_days": 0}, "backfill_days"),
    ({"max_attempts": True}, "max_attempts"),
    ({"kinds": {"Access Request": "joiner"}}, "Access Request"),
    ({"kinds": {}}, "kinds"),
    ({"fields": {"subject_email": SUBJECT_FIELD}}, "target_system"),
    ({"fields": {**FIELDS, "approved_at": "customfield_1"}}, "approved_at"),
    ({"jqll": "x"}, "jqll"),
])
def test_bad_options_are_config_errors(jira, tmp_path, change, key):
    with pytest.raises(ConfigError) as err:
        Jira.validate(source(jira, tmp_path, **change))
    assert err.value.key == key and "config.toml" in str(err.value)


def test_missing_required_option(jira, tmp_path):
    src = source(jira, tmp_path)
    del src.options["jql"]
    with pytest.raises(ConfigError) as err:
        Jira.validate(src)
    assert err.value.key == "jql"


# --- mapping ------------------------------------------------------------------------------------

def test_maps_every_kind_with_approval_from_the_approval_record(jira, tmp_path):
    jira.add_request("ACCESS-1", "Access Request", "alice@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z", "AWS for Alice",
                     approvals=[("approved", "mgr@corp.example", "2026-03-02T10:15:00Z")],
                     resolved="2026-03-03T08:00:00Z",
                     # an editable field claiming another approval date: must be ignored
                     fields={"customfield_10099": "2026-02-01", "duedate": "2026-02-01"})
    jira.add_request("ACCESS-2", "Offboarding", "bob@corp.example", "workspace",
                     "2026-03-04T09:00:00Z", "Offboard Bob",
                     approvals=[("approved", "hr@corp.example", "2026-03-04T09:30:00Z")])
    jira.add_request("ACCESS-3", "Role Change", "carol@corp.example", "entra",
                     "2026-03-05T09:00:00Z", "Carol to Finance",
                     approvals=[("approved", "cfo@corp.example", "2026-03-05T12:00:00Z")])
    jira.add_request("ACCESS-4", "Get IT help", "dave@corp.example", None,
                     "2026-03-06T09:00:00Z", "Printer jam")
    jira.add_request("ACCESS-5", "Question", "erin@corp.example", None,
                     "2026-03-06T10:00:00Z", "How do I")

    result, _ = run(jira, tmp_path)
    rows = tickets(result)
    assert set(rows) == {"ACCESS-1", "ACCESS-2", "ACCESS-3"}
    one = rows["ACCESS-1"]
    assert one == {
        "system": "jira", "key": "ACCESS-1", "kind": "access_request",
        "subject_email": "alice@corp.example", "target_system": "aws-prod",
        "requested_at": utc("2026-03-02T09:00:00Z"), "approved_at": utc("2026-03-02T10:15:00Z"),
        "approver_email": "mgr@corp.example", "status": "approved",
        "resolved_at": utc("2026-03-03T08:00:00Z"), "url": f"{jira.url}/browse/ACCESS-1",
        "summary": "AWS for Alice"}
    assert (rows["ACCESS-2"]["kind"], rows["ACCESS-3"]["kind"]) == ("offboarding", "role_change")
    assert rows["ACCESS-3"]["approved_at"] == utc("2026-03-05T12:00:00Z")
    assert pd.isna(rows["ACCESS-2"]["resolved_at"])
    assert result.extra["skipped_unmapped_types"] == {"Get IT help": 1, "Question": 1}
    assert result.extra["kinds"] == {"access_request": 1, "offboarding": 1, "role_change": 1}
    # unmapped tickets cost no approval call
    assert {r["path"].split("/")[4] for r in jira.approval_requests()} == \
        {"ACCESS-1", "ACCESS-2", "ACCESS-3"}
    assert result.principal.startswith(EMAIL) and result.instances == [jira.url]
    assert str(result.tables["tickets"]["approved_at"].dtype) == "datetime64[us, UTC]"


def test_kinds_match_case_insensitively_and_fall_back_to_the_issue_type(jira, tmp_path):
    jira.add_request("ACCESS-1", "ACCESS REQUEST", "a@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z",
                     approvals=[("approved", "m@corp.example", "2026-03-02T10:00:00Z")])
    # no request type (a plain Jira issue, not a JSM request): kind from the issue type,
    # and the approvals endpoint says 404 → pending, stated as a limitation
    jira.add_request("ACCESS-2", None, "b@corp.example", "aws-prod", "2026-03-02T09:00:00Z",
                     issue_type="Access Request", service_request=False)
    result, _ = run(jira, tmp_path)
    rows = tickets(result)
    assert rows["ACCESS-1"]["status"] == "approved"
    assert rows["ACCESS-2"]["kind"] == "access_request"
    assert rows["ACCESS-2"]["status"] == "pending" and pd.isna(rows["ACCESS-2"]["approved_at"])
    assert any("ACCESS-2" in text and "404" in text for text in result.limitations)


def test_without_request_type_field_kinds_come_from_issue_types(jira, tmp_path):
    jira.add_request("ACCESS-1", "Access Request", "a@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z", issue_type="Offboarding")
    fields = {"subject_email": SUBJECT_FIELD, "target_system": TARGET_FIELD}
    result, _ = run(jira, tmp_path, fields=fields)
    assert tickets(result)["ACCESS-1"]["kind"] == "offboarding"
    assert REQUEST_TYPE_FIELD not in jira.search_requests()[0]["json"]["fields"]


def test_rejected_pending_and_multi_step_approvals(jira, tmp_path):
    at = "2026-03-02T09:00:00Z"
    add = lambda key, approvals: jira.add_request(   # noqa: E731
        key, "Access Request", f"{key.lower()}@corp.example", "aws-prod", at,
        approvals=approvals)
    add("ACCESS-1", [("declined", "mgr@corp.example", "2026-03-02T10:00:00Z")])
    add("ACCESS-2", [("pending", "mgr@corp.example", None)])
    add("ACCESS-3", [])
    add("ACCESS-4", [("approved", "mgr@corp.example", "2026-03-02T10:00:00Z"),
                     ("pending", "cfo@corp.example", None)])
    add("ACCESS-5", [("approved", "mgr@corp.example", "2026-03-02T10:00:00Z"),
                     ("approved", "cfo@corp.example", "2026-03-03T16:00:00Z")])
    add("ACCESS-6", [("approved", "mgr@corp.example", "2026-03-02T10:00:00Z"),
                     ("declined", "cfo@corp.example", "2026-03-02T11:00:00Z")])
    add("ACCESS-7", [("declined", "mgr@corp.example", "2026-03-02T10:00:00Z"),
                     ("approved", "mgr2@corp.example", "2026-03-04T10:00:00Z")])
    # two approvers on one step, one of them approved
    add("ACCESS-8", [approval("approved", [("sec@corp.example", "pending"),
                                           ("mgr@corp.example", "approved")],
                              completed="2026-03-02T12:00:00Z")])
    result, _ = run(jira, tmp_path)
    rows = tickets(result)
    status = {k: (r["status"], None if pd.isna(r["approved_at"]) else r["approved_at"],
                  r["approver_email"] if isinstance(r["approver_email"], str) else None)
              for k, r in rows.items()}
    assert status == {
        "ACCESS-1": ("rejected", None, None),
        "ACCESS-2": ("pending", None, None),
        "ACCESS-3": ("pending", None, None),
        "ACCESS-4": ("pending", None, None),
        "ACCESS-5": ("approved", utc("2026-03-03T16:00:00Z"), "cfo@corp.example"),
        "ACCESS-6": ("rejected", None, None),
        "ACCESS-7": ("approved", utc("2026-03-04T10:00:00Z"), "mgr2@corp.example"),
        "ACCESS-8": ("approved", utc("2026-03-02T12:00:00Z"), "mgr@corp.example"),
    }
    assert result.extra["statuses"] == {"rejected": 2, "pending": 3, "approved": 3}


def test_self_approval_passes_through_unjudged(jira, tmp_path):
    jira.add_request("ACCESS-1", "Access Request", "alice@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z",
                     approvals=[("approved", "alice@corp.example", "2026-03-02T09:01:00Z")])
    row = tickets(run(jira, tmp_path)[0])["ACCESS-1"]
    assert row["status"] == "approved"
    assert row["approver_email"] == row["subject_email"] == "alice@corp.example"


def test_hidden_approver_email_is_a_limitation_not_a_guess(jira, tmp_path):
    jira.add_request("ACCESS-1", "Access Request", "alice@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z",
                     approvals=[("approved", None, "2026-03-02T10:00:00Z")])
    result, _ = run(jira, tmp_path)
    row = tickets(result)["ACCESS-1"]
    assert row["status"] == "approved" and pd.isna(row["approver_email"])
    assert any("no approver email" in text and "ACCESS-1" in text
               for text in result.limitations)


@pytest.mark.parametrize("subject, target, expected", [
    ("alice@corp.example", "aws-prod", ("alice@corp.example", "aws-prod")),            # strings
    (option("alice@corp.example"), option("aws-prod"), ("alice@corp.example", "aws-prod")),
    (user("alice@corp.example"), option("aws-prod"), ("alice@corp.example", "aws-prod")),
    ([user("alice@corp.example"), user("bob@corp.example")], [option("aws-prod"),
                                                              option("entra")],
     ("alice@corp.example", "aws-prod")),                                                # arrays
    (user(None, name="Alice"), {"value": "aws-prod", "child": {"value": "eu"}},
     (None, "aws-prod")),                              # hidden email: never the display name
    (None, None, (None, None)),
    ("  Alice@Corp.Example ", " aws-prod ", ("Alice@Corp.Example", "aws-prod")),
])
def test_custom_field_shapes(jira, tmp_path, subject, target, expected):
    jira.add_request("ACCESS-1", "Access Request", None, None, "2026-03-02T09:00:00Z",
                     fields={SUBJECT_FIELD: subject, TARGET_FIELD: target})
    row = tickets(run(jira, tmp_path)[0])["ACCESS-1"]
    got = tuple(None if pd.isna(row[c]) else row[c] for c in ("subject_email", "target_system"))
    assert got == expected


def test_fields_are_asked_for_explicitly(jira, tmp_path):
    jira.add_request("ACCESS-1", "Access Request", "a@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z")
    run(jira, tmp_path)
    fields = jira.search_requests()[0]["json"]["fields"]
    for name in ("key", "created", "resolutiondate", "status", "reporter", "summary",
                 "issuetype", SUBJECT_FIELD, TARGET_FIELD, REQUEST_TYPE_FIELD):
        assert name in fields
    assert "*all" not in fields and "*navigable" not in fields


# --- the window ---------------------------------------------------------------------------------

def test_jql_is_bounded_by_the_window_in_the_accounts_time_zone(jira, tmp_path):
    jira.time_zone = "America/New_York"          # EST, UTC-5 on these dates
    since = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    jira.add_request("ACCESS-1", "Access Request", "a@corp.example", "aws-prod",
                     "2026-03-01T12:30:00Z")     # updated 30 min after the window start
    jira.add_request("ACCESS-2", "Access Request", "b@corp.example", "aws-prod",
                     "2026-03-01T09:00:00Z")     # 3 h before: outside (margin is 1 h)
    jira.add_request("ACCESS-3", "Access Request", "c@corp.example", "aws-prod",
                     "2025-12-01T09:00:00Z",     # created long ago, updated in the window
                     updated="2026-03-10T09:00:00Z")
    result, _ = run(jira, tmp_path, since=since)
    (search,) = jira.search_requests()
    # since - 1 h = 11:00Z = 06:00 in New York; until + 1 h = 13:00Z = 09:00 EDT (Mar 20)
    assert search["json"]["jql"] == ('(project = ACCESS) AND updated >= "2026-03-01 06:00" '
                                     'AND updated <= "2026-03-20 09:01" '
                                     'ORDER BY created ASC, key ASC')
    assert set(tickets(result)) == {"ACCESS-1", "ACCESS-3"}
    assert result.extra["jql_time_zone"] == "America/New_York"
    assert result.extra["window"] == {"start": "2026-03-01T12:00:00Z",
                                      "end": "2026-03-20T12:00:00Z"}


def test_hidden_time_zone_widens_the_window_by_fourteen_hours(jira, tmp_path):
    jira.time_zone = None
    since = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    run(jira, tmp_path, since=since)
    jql = jira.search_requests()[0]["json"]["jql"]
    assert 'updated >= "2026-02-28 22:00"' in jql and 'updated <= "2026-03-21 02:01"' in jql


@pytest.mark.parametrize("first, options, since", [
    (True, {}, NOW - dt.timedelta(days=400)),
    (True, {"backfill_days": 30}, NOW - dt.timedelta(days=30)),
    (False, {}, SINCE),
])
def test_first_collection_backfills(jira, tmp_path, first, options, since):
    result, _ = run(jira, tmp_path, first=first, **options)
    low = (since - dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    assert f'updated >= "{low}"' in jira.search_requests()[0]["json"]["jql"]
    assert result.extra["window"]["start"] == since.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_window_jql_across_a_dst_change():
    # 8 Mar 2026 02:00 EST → 03:00 EDT: the bound is still an hour before `since`
    since = dt.datetime(2026, 3, 8, 8, 30, tzinfo=dt.timezone.utc)
    jql, zone = window_jql("project = A", since, since + dt.timedelta(hours=1),
                           "America/New_York")
    assert 'updated >= "2026-03-08 03:30"' in jql and zone == "America/New_York"
    jql, zone = window_jql("project = A", since, since, "Not/AZone")
    assert 'updated >= "2026-03-07 18:30"' in jql and zone.startswith("UTC")


# --- paging, request counts, raw pages ----------------------------------------------------------

def test_pages_with_next_page_token_and_records_every_page(jira, tmp_path):
    keys = jira.add_generated(230, "2026-03-01T00:00:00Z", every=dt.timedelta(minutes=5))
    result, raw = run(jira, tmp_path, page_size=100)
    assert sorted(tickets(result)) == sorted(keys)

    searches = jira.search_requests()
    assert len(searches) == 3
    assert "nextPageToken" not in searches[0]["json"]
    pages = raw_pages(raw, "jira.search")
    assert [len(p["body"]["response"]["issues"]) for p in pages] == [100, 100, 30]
    # each request carried the token of the page before it
    for page, following in zip(pages, searches[1:]):
        assert following["json"]["nextPageToken"] == page["body"]["response"]["nextPageToken"]
        assert page["body"]["request"]["json"]["jql"] == following["json"]["jql"]
    assert pages[-1]["body"]["response"]["isLast"] is True

    # one approval request per ticket (one page each), every one recorded with its key
    assert len(jira.approval_requests()) == 230
    approvals = raw_pages(raw, "jira.approvals")
    assert len(approvals) == 230
    assert {p["body"]["request"]["key"] for p in approvals} == set(keys)
    assert len(jira.requests) == 1 + 3 + 230
    assert len(raw_pages(raw, "jira.myself")) == 1
    manifest = raw.requests
    assert manifest["jira.search"]["pages"] == 3 and manifest["jira.search"]["records"] == 230
    assert manifest["jira.approvals"]["records"] == 230
    assert not any(r["path"] == "/rest/api/3/search" for r in jira.requests)
    assert TOKEN not in json.dumps(manifest)


def test_approval_pages_follow_start_and_is_last_page(jira, tmp_path):
    jira.approval_limit_cap = 2      # the server pages smaller than the 50 asked for
    steps = [("approved", f"m{i}@corp.example", f"2026-03-02T1{i}:00:00Z") for i in range(5)]
    jira.add_request("ACCESS-1", "Access Request", "a@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z", approvals=steps)
    result, raw = run(jira, tmp_path)
    assert [r["params"]["start"] for r in jira.approval_requests()] == ["0", "2", "4"]
    row = tickets(result)["ACCESS-1"]
    assert row["approved_at"] == utc("2026-03-02T14:00:00Z")
    assert row["approver_email"] == "m4@corp.example"
    assert len(raw_pages(raw, "jira.approvals")) == 3


def test_repeated_page_token_is_an_error_and_the_page_is_kept(jira, tmp_path):
    jira.add_generated(5, "2026-03-01T00:00:00Z")
    jira.repeat_next_token()
    with pytest.raises(SourceError) as err:
        run(jira, tmp_path, page_size=2)
    assert "a second time" in str(err.value)
    raw = RawRecorder(tmp_path / "raw")
    # page 1 handed out the token, page 2 handed it out again: both pages are evidence
    pages = raw_pages(raw, "jira.search")
    assert len(pages) == 2 and len(jira.search_requests()) == 2
    assert {p["body"]["response"]["nextPageToken"] for p in pages} == {"repeated-token"}


# --- throttling and failures --------------------------------------------------------------------

def test_429_is_retried_honouring_retry_after(jira, tmp_path):
    jira.add_request("ACCESS-1", "Access Request", "a@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z",
                     approvals=[("approved", "m@corp.example", "2026-03-02T10:00:00Z")])
    jira.throttle_next(1, retry_after=1, path="/rest/api/3/search/jql")
    jira.throttle_next(1, retry_after=1, path="/rest/servicedeskapi/")
    started = time.monotonic()
    result, raw = run(jira, tmp_path)
    assert time.monotonic() - started >= 2.0
    assert [r["status"] for r in jira.search_requests()] == [429, 200]
    assert [r["status"] for r in jira.approval_requests()] == [429, 200]
    assert tickets(result)["ACCESS-1"]["status"] == "approved"
    assert len(raw_pages(raw, "jira.search")) == 1      # only the good page is evidence


def test_persistent_5xx_gives_up_after_max_attempts(jira, tmp_path):
    jira.fail_next(5, status=503, path="/rest/api/3/search/jql")
    with pytest.raises(SourceError) as err:
        run(jira, tmp_path, max_attempts=2)
    assert "POST /rest/api/3/search/jql" in str(err.value) and "503" in str(err.value)
    assert len(jira.search_requests()) == 2


def test_bad_credentials_are_a_source_error_naming_what_to_check(jira, tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "wrong-token-value")
    with pytest.raises(SourceError) as err:
        run(jira, tmp_path)
    text = str(err.value)
    assert "401" in text and "api_token" in text and "/rest/api/3/myself" in text
    assert "wrong-token-value" not in text and err.value.source == "jira"


def test_denied_approvals_name_the_permission(jira, tmp_path):
    jira.add_request("ACCESS-1", "Access Request", "a@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z")
    jira.forbid("/rest/servicedeskapi/")
    with pytest.raises(SourceError) as err:
        run(jira, tmp_path)
    assert "403" in str(err.value) and "Service Desk agent" in str(err.value)


def test_bad_jql_says_to_check_jql_and_browse_permission(jira, tmp_path):
    with pytest.raises(SourceError) as err:
        run(jira, tmp_path, jql="project = ACCESS AND colour = red")
    assert "colour" in str(err.value) and "Browse projects" in str(err.value)


def test_old_search_endpoint_is_gone_and_never_used(jira, tmp_path):
    auth = (EMAIL, TOKEN)
    for method in ("GET", "POST"):
        response = requests.request(method, f"{jira.url}/rest/api/3/search", auth=auth,
                                    params={"jql": "project = ACCESS"}, timeout=5)
        assert response.status_code == 410
    jira.requests.clear()
    run(jira, tmp_path)
    assert {r["path"] for r in jira.requests} == {"/rest/api/3/myself",
                                                  "/rest/api/3/search/jql"}


def test_missing_ca_bundle_is_a_config_error(jira, tmp_path):
    with pytest.raises(ConfigError) as err:
        run(jira, tmp_path, ca_bundle="missing-ca.pem")
    assert err.value.key == "ca_bundle" and str(tmp_path) in str(err.value)


# --- check --------------------------------------------------------------------------------------

def test_check_passes_with_access_and_records_nothing(jira, tmp_path):
    jira.add_request("ACCESS-1", "Access Request", "a@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z")
    src = source(jira, tmp_path)
    ctx = context(src, tmp_path)
    assert Jira().check(ctx) == []
    assert ctx.raw.requests == {}
    paths = [r["path"] for r in jira.requests]
    assert paths == ["/rest/api/3/myself", "/rest/api/3/search/jql",
                     "/rest/servicedeskapi/request/ACCESS-1/approval"]
    assert jira.search_requests()[0]["json"]["maxResults"] == 1


def test_check_names_the_missing_permission(jira, tmp_path, monkeypatch):
    jira.add_request("ACCESS-1", "Access Request", "a@corp.example", "aws-prod",
                     "2026-03-02T09:00:00Z")
    jira.forbid("/rest/servicedeskapi/")
    ctx = context(source(jira, tmp_path), tmp_path)
    (problem,) = Jira().check(ctx)
    assert "403" in problem and "Service Desk agent" in problem
    monkeypatch.setenv(TOKEN_ENV, "nope")
    (problem,) = Jira().check(ctx)
    assert "401" in problem and "api_token" in problem


def test_check_without_any_ticket_says_approvals_are_unverified(jira, tmp_path):
    (problem,) = Jira().check(context(source(jira, tmp_path), tmp_path))
    assert "cannot verify" in problem
