"""google_workspace against the real google-auth and google-api-python-client over real HTTP:
our emulator (accessproof_fakes.google) serves the token endpoint, Directory and Reports."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import math
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import google.auth as google_auth
import google.auth.credentials as google_credentials
import google.auth.iam as google_iam
import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from google.auth import exceptions as auth_exceptions
from google.oauth2 import service_account

from accessproof_fakes.google import (DIRECTORY_SCOPE, IAM_SCOPES, REPORTS,
                                      REPORTS_SCOPE, USERS_READ, GoogleEmulator, apply_fields,
                                      client_id_for, make_service_account_key, parse_fields,
                                      rfc3339)
from collector.config import Secret, SourceConfig
from collector.errors import ConfigError, SourceError
from collector.integration import CollectContext
from collector.schema import SCHEMAS
from collector.store import RawRecorder
from integrations.google_workspace import (ADMIN_EVENTS, EVENTS, LOGIN_EVENTS, SCOPES,
                                           GoogleWorkspace)

NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=dt.timezone.utc)
SINCE = NOW - dt.timedelta(days=30)
CUSTOMER = "C03az79cb"
ADMIN = "admin@corp.example"
SA = "accessproof@accessproof-test.iam.gserviceaccount.com"
FIXTURES = Path(__file__).parent / "data" / "google"
N_EVENT_NAMES = len(ADMIN_EVENTS) + len(LOGIN_EVENTS)


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def key_template(tmp_path_factory) -> dict:
    """One throwaway RSA key for the module (generating one costs ~0.1 s)."""
    return make_service_account_key(tmp_path_factory.mktemp("key") / "sa.json", SA,
                                    "http://127.0.0.1:1/token")


@pytest.fixture(scope="module")
def public_key(key_template):
    """Its public half, parsed once (parsing the PEM costs ~0.07 s)."""
    return serialization.load_pem_private_key(key_template["private_key"].encode(),
                                              password=None).public_key()


@pytest.fixture
def google(key_template, public_key):
    with GoogleEmulator(customer_id=CUSTOMER, admin=ADMIN, service_account=SA,
                        now=NOW) as emulator:
        emulator.add_key(public_key, client_email=SA, key_id=key_template["private_key_id"])
        yield emulator


@pytest.fixture
def key_file(google, key_template, tmp_path) -> Path:
    path = tmp_path / "secrets" / "google-sa.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**key_template, "token_uri": google.token_uri}))
    return path


@pytest.fixture
def sleeps() -> list[float]:
    return []


def source(google, key_file, name="workspace", **options) -> SourceConfig:
    base = {"customer": "my_customer", "delegated_admin": ADMIN,
            "service_account_file": Secret("file:secrets/google-sa.json", key_file.parent.parent),
            "api_endpoint": google.url, "max_attempts": 3}
    base.update(options)
    base = {k: v for k, v in base.items() if v is not None}
    return SourceConfig(name=name, type="google_workspace", options=base,
                        section=f"sources '{name}'", file="config.toml")


def context(src: SourceConfig, tmp_path: Path, *, since=SINCE, until=NOW, first=False):
    raw = RawRecorder(tmp_path / "raw")
    return CollectContext(name=src.name, config=src, now=NOW, events_since=since,
                          events_until=until, raw=raw, log=logging.getLogger("test.google"),
                          first_collection=first)


def run(google, key_file, tmp_path, *, sleeps=None, since=SINCE, first=False, **options):
    """One collection; returns (result, raw recorder)."""
    src = source(google, key_file, **options)
    GoogleWorkspace.validate(src)
    ctx = context(src, tmp_path, since=since, first=first)
    integration = GoogleWorkspace(sleep=sleeps.append if sleeps is not None else _no_sleep)
    try:
        return integration.collect(ctx), ctx.raw
    finally:
        ctx.raw.close()


def _no_sleep(seconds: float) -> None:
    pass


def raw_pages(raw: RawRecorder, request: str) -> list[dict]:
    with gzip.open(raw.raw_dir / f"{request}.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def by_login(result) -> dict[str, dict]:
    return {row["login"]: row for row in result.tables["accounts"].to_dict("records")}


def fails(google, key_file, tmp_path, **kwargs) -> str:
    with pytest.raises(SourceError) as err:
        run(google, key_file, tmp_path, **kwargs)
    assert err.value.exit_code == 2 and err.value.source == "workspace"
    return str(err.value)


# --- integration contract -----------------------------------------------------------------------

def test_declares_scopes_options_and_retention():
    assert [p.name for p in GoogleWorkspace.permissions] == [DIRECTORY_SCOPE, REPORTS_SCOPE]
    assert list(SCOPES) == [DIRECTORY_SCOPE, REPORTS_SCOPE]
    assert {p.system for p in GoogleWorkspace.permissions} == {"google-oauth-scope"}
    why = {p.name: p.why for p in GoogleWorkspace.permissions}
    assert "Users › Read" in why[DIRECTORY_SCOPE] and "Reports" in why[REPORTS_SCOPE]
    assert GoogleWorkspace.type == "google_workspace"
    assert GoogleWorkspace.tables == ("accounts", "events")
    assert GoogleWorkspace.log_retention_days == 180
    assert set(GoogleWorkspace.options) == {
        "customer", "delegated_admin", "service_account_file", "domain", "api_endpoint",
        "token_uri", "max_attempts", "backfill_days", "ca_bundle"}
    assert set(EVENTS) == {"admin", "login"}


@pytest.mark.parametrize("options, key", [
    ({"custmer": "x"}, "custmer"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": True}, "max_attempts"),
    ({"backfill_days": 181}, "backfill_days"),
    ({"api_endpoint": "127.0.0.1:8081"}, "api_endpoint"),
    ({"token_uri": "oauth2.googleapis.com/token"}, "token_uri"),
    ({"delegated_admin": "admin"}, "delegated_admin"),
    ({"domain": "admin@corp.example"}, "domain"),
    ({"service_account_file": "/etc/google-sa.json", "delegated_admin": ADMIN},
     "service_account_file"),
    ({"service_account_file": Secret("file:/etc/sa.json", Path("/"))}, "delegated_admin"),
])
def test_bad_options_are_config_errors(options, key):
    src = SourceConfig(name="ws", type="google_workspace", options=options,
                       section="sources 'ws'", file="c.toml")
    with pytest.raises(ConfigError) as err:
        GoogleWorkspace.validate(src)
    assert err.value.key == key and "c.toml" in str(err.value)


def test_unusable_key_file_is_a_config_error(google, key_file, tmp_path):
    key_file.write_text(json.dumps({"type": "authorized_user", "client_id": "x"}))
    with pytest.raises(ConfigError) as err:
        run(google, key_file, tmp_path)
    assert err.value.key == "service_account_file" and "service-account key" in str(err.value)
    key_file.unlink()
    with pytest.raises(ConfigError, match="cannot read secret file"):
        run(google, key_file, tmp_path)
    with pytest.raises(ConfigError, match="no such file") as err:
        run(google, key_file, tmp_path, ca_bundle="no-such-dir/ca.pem")   # config-relative
    assert err.value.key == "ca_bundle"
    assert google.requests == []


# --- accounts -----------------------------------------------------------------------------------

def seed_users(google):
    google.add_user("ann@corp.example", name="Ann Example",
                    aliases=["a.example@corp.example", "ann@corp-old.example"],
                    non_editable_aliases=["ann@corp.example.test-google-a.com"],
                    created="2025-02-03T04:05:06.789Z", last_login=NOW - dt.timedelta(hours=5))
    google.add_user("sam@corp.example", name="Sam Suspended", suspended=True,
                    last_login="2025-12-01T08:00:00Z")
    google.add_user("arc@corp.example", name="Archie Archived", archived=True,
                    last_login="2025-11-01T08:00:00Z")
    google.add_user("new@corp.example", name="New Starter")          # never signed in
    google.add_user("helpdesk@corp.example", name="Help Desk", is_delegated_admin=True,
                    last_login=NOW - dt.timedelta(days=2))


def test_accounts_mapping(google, key_file, tmp_path):
    seed_users(google)
    result, raw = run(google, key_file, tmp_path)
    accounts = result.tables["accounts"]
    assert result.principal == f"{SA} as {ADMIN}"
    assert result.instances == [CUSTOMER]          # "my_customer" resolved to the customer id
    assert set(accounts["source"]) == {"workspace"} and set(accounts["instance"]) == {CUSTOMER}
    assert str(accounts["created_at"].dtype) == "datetime64[us, UTC]"
    rows = by_login(result)
    assert set(rows) == {ADMIN, "ann@corp.example", "sam@corp.example", "arc@corp.example",
                         "new@corp.example", "helpdesk@corp.example"}
    for email, row in rows.items():
        assert row["account_id"] == google.user(email)["id"] and row["email"] == email
        assert row["kind"] == "human" and row["groups"] == []

    ann = rows["ann@corp.example"]
    assert ann["display_name"] == "Ann Example" and ann["enabled"] and not ann["privileged"]
    assert ann["created_at"] == pd.Timestamp("2025-02-03T04:05:06.789Z")
    assert ann["last_login_at"] == pd.Timestamp(NOW - dt.timedelta(hours=5))
    assert not bool(ann["never_logged_in"])
    assert not rows["sam@corp.example"]["enabled"]              # suspended
    assert not rows["arc@corp.example"]["enabled"]              # archived
    assert rows["sam@corp.example"]["last_login_at"] == pd.Timestamp("2025-12-01T08:00:00Z")
    new = rows["new@corp.example"]
    assert bool(new["never_logged_in"]) and pd.isna(new["last_login_at"]) and new["enabled"]
    assert rows[ADMIN]["privileged"] and rows["helpdesk@corp.example"]["privileged"]
    assert all(pd.isna(r["disabled_at"]) for r in rows.values())

    # aliases (editable and domain-alias ones) are kept in the raw page; the account's email
    # stays the primary email
    users = raw_pages(raw, "directory.users.list")[0]["body"]["users"]
    raw_ann = next(u for u in users if u["primaryEmail"] == "ann@corp.example")
    assert raw_ann["aliases"] == ["a.example@corp.example", "ann@corp-old.example"]
    assert raw_ann["nonEditableAliases"] == ["ann@corp.example.test-google-a.com"]
    assert raw_ann["name"] == {"fullName": "Ann Example"}        # only the fields asked for
    assert not any("recoveryEmail" in u for u in users)
    assert result.extra["users_with_aliases"] == 1
    assert result.extra["credentials"] == "service_account_key"
    assert result.extra["service_account"] == SA and result.extra["customer_id"] == CUSTOMER


def test_a_deleted_user_leaves_the_directory_but_not_the_events(google, key_file, tmp_path):
    google.add_user("leaver@corp.example")
    google.delete_user("leaver@corp.example")
    google.add_activity("admin", "DELETE_USER", NOW - dt.timedelta(days=1), "leaver@corp.example")
    result, _ = run(google, key_file, tmp_path)
    assert list(result.tables["accounts"]["login"]) == [ADMIN]
    (event,) = result.tables["events"].to_dict("records")
    assert (event["action"], event["target_account"]) == ("deleted", "leaver@corp.example")


def test_users_of_one_domain_and_an_explicit_customer(google, key_file, tmp_path):
    google.add_user("ann@corp.example")
    google.add_user("bo@subsidiary.example")
    result, _ = run(google, key_file, tmp_path, domain="subsidiary.example")
    assert list(result.tables["accounts"]["login"]) == ["bo@subsidiary.example"]
    (request,) = google.api_requests("directory.users.list")
    assert request["params"]["domain"] == "subsidiary.example"
    assert "customer" not in request["params"]

    google.reset()
    result, _ = run(google, key_file, tmp_path / "b", customer=CUSTOMER)
    assert len(result.tables["accounts"]) == 3
    assert google.api_requests("directory.users.list")[0]["params"]["customer"] == CUSTOMER
    assert {r["params"].get("customerId") for r in
            google.api_requests("reports.activities.list")} == {CUSTOMER}


def test_one_users_request_per_500_users(google, key_file, tmp_path):
    google.add_users(1200)                         # + the admin = 1,201 users
    result, raw = run(google, key_file, tmp_path)
    assert len(result.tables["accounts"]) == 1201
    assert result.tables["accounts"]["account_id"].is_unique

    lists = google.api_requests("directory.users.list")
    assert len(lists) == math.ceil(1201 / 500) == 3
    assert all(r["params"]["maxResults"] == "500" and r["params"]["customer"] == "my_customer"
               for r in lists)
    assert ["pageToken" in r["params"] for r in lists] == [False, True, True]
    # every event name is asked for once (no activities: one page each), one token for all
    reports = google.api_requests("reports.activities.list")
    assert len(reports) == N_EVENT_NAMES
    assert len(google.token_requests()) == 1
    assert len(google.api_requests()) == 3 + N_EVENT_NAMES

    entry = raw.requests["directory.users.list"]
    assert entry["pages"] == 3 and entry["records"] == 1201
    assert [len(p["body"]["users"]) for p in raw_pages(raw, "directory.users.list")] == \
        [500, 500, 201]
    assert entry["endpoint"] == f"{google.url}/admin/directory/v1/users"
    assert entry["parameters"]["maxResults"] == 500 and "fields" in entry["parameters"]


# --- events -------------------------------------------------------------------------------------

def test_events_mapping_and_server_side_filters(google, key_file, tmp_path):
    google.add_user("ann@corp.example")
    t = NOW - dt.timedelta(days=2)
    expected = {}   # (name, target) → (action, outcome, actor)
    for name, action in ADMIN_EVENTS.items():
        google.add_activity("admin", name, t, "ann@corp.example")
        expected[(name, "ann@corp.example")] = (action, "success", ADMIN)
    google.add_activity("login", "login_success", t, "ann@corp.example")
    expected[("login_success", "ann@corp.example")] = ("login", "success", "ann@corp.example")
    google.add_activity("login", "login_failure", t, "mallory@corp.example")
    expected[("login_failure", "mallory@corp.example")] = ("login", "failure",
                                                           "mallory@corp.example")
    # not asked for: other names, other applications, outside the window
    google.add_activity("admin", "CHANGE_PASSWORD", t, "ann@corp.example")
    google.add_activity("login", "logout", t, "ann@corp.example")
    google.add_activity("drive", "view", t, "ann@corp.example")
    google.add_activity("admin", "CREATE_USER", SINCE - dt.timedelta(minutes=1), "old@corp.example")
    google.add_activity("login", "login_success", NOW + dt.timedelta(minutes=1),
                        "ann@corp.example")

    result, raw = run(google, key_file, tmp_path)
    events = result.tables["events"]
    got = {(r["event_id"].split("|")[3], r["target_account"]): r
           for r in events.to_dict("records")}
    assert set(got) == set(expected)
    for key, (action, outcome, actor) in expected.items():
        row = got[key]
        assert (row["action"], row["outcome"], row["actor"]) == (action, outcome, actor), key
        assert row["target_email"] == key[1] and row["at"] == pd.Timestamp(t)
        assert row["source"] == "workspace" and row["instance"] == CUSTOMER
    assert events["event_id"].is_unique and str(events["at"].dtype) == "datetime64[us, UTC]"
    assert set(events["instance"]) == set(result.tables["accounts"]["instance"])

    # filtered on the server: one request per event name, each with the window
    reports = google.api_requests("reports.activities.list")
    asked = sorted((r["path"].rsplit("/", 1)[1], r["params"]["eventName"]) for r in reports)
    assert asked == sorted([("admin", n) for n in ADMIN_EVENTS] +
                           [("login", n) for n in LOGIN_EVENTS])
    assert {r["params"]["startTime"] for r in reports} == {rfc3339(SINCE)}
    assert {r["params"]["endTime"] for r in reports} == {rfc3339(NOW)}
    assert {r["params"]["maxResults"] for r in reports} == {"1000"}
    assert all("/activity/users/all/applications/" in r["path"] for r in reports)
    assert "customerId" not in reports[0]["params"]           # my_customer: the admin's own
    assert result.extra["events_window"] == {"start": "2026-02-18T12:00:00Z",
                                             "end": "2026-03-20T12:00:00Z"}
    page = raw_pages(raw, "reports.activities.list-admin-CREATE_USER")[0]["body"]
    assert page["items"][0]["events"][0]["parameters"] == [
        {"name": "USER_EMAIL", "value": "ann@corp.example"}]


def test_an_activity_returned_for_two_event_names_counts_each_event_once(google, key_file,
                                                                         tmp_path):
    google.add_raw_activity({
        "kind": "admin#reports#activity",
        "id": {"time": "2026-03-18T10:00:00.000Z", "uniqueQualifier": "-42",
               "applicationName": "admin", "customerId": CUSTOMER},
        "actor": {"callerType": "USER", "email": ADMIN, "profileId": "1"},
        "events": [
            {"type": "USER_SETTINGS", "name": "CREATE_USER",
             "parameters": [{"name": "USER_EMAIL", "value": "ops@corp.example"}]},
            {"type": "DELEGATED_ADMIN_SETTINGS", "name": "ASSIGN_ROLE",
             "parameters": [{"name": "ROLE_NAME", "value": "_HELP_DESK_ADMIN_ROLE"},
                            {"name": "USER_EMAIL", "value": "ops@corp.example"}]}]})
    result, _ = run(google, key_file, tmp_path)
    events = result.tables["events"]
    assert sorted(events["action"]) == ["created", "role_changed"]
    assert set(events["target_account"]) == {"ops@corp.example"}


def test_activity_paging_and_raw_pages(google, key_file, tmp_path):
    start = NOW - dt.timedelta(days=10)
    for i in range(1201):
        google.add_activity("login", "login_success", start + dt.timedelta(minutes=i),
                            f"user{i % 40:02d}@corp.example")
    google.add_activity("admin", "SUSPEND_USER", start, "user01@corp.example")
    result, raw = run(google, key_file, tmp_path)
    events = result.tables["events"]
    assert len(events) == 1202 and events["event_id"].is_unique
    assert (events["action"] == "login").sum() == 1201

    logins = [r for r in google.api_requests("reports.activities.list")
              if r["params"]["eventName"] == "login_success"]
    assert len(logins) == 2
    assert ["pageToken" in r["params"] for r in logins] == [False, True]
    entry = raw.requests["reports.activities.list-login-login_success"]
    assert entry["pages"] == 2 and entry["records"] == 1201
    pages = raw_pages(raw, "reports.activities.list-login-login_success")
    assert [len(p["body"]["items"]) for p in pages] == [1000, 201]
    assert pages[0]["body"]["items"][0]["id"]["time"] > pages[1]["body"]["items"][0]["id"]["time"]
    assert entry["parameters"]["eventName"] == "login_success"
    assert entry["endpoint"] == \
        f"{google.url}/admin/reports/v1/activity/users/all/applications/login"

    # every request has its raw file, empty answers included; no token or key ever recorded
    names = {"directory.users.list"} | {f"reports.activities.list-{app}-{name}"
                                        for app, names in EVENTS.items() for name in names}
    assert set(raw.requests) == names
    for name in names:
        assert len(raw_pages(raw, name)) == raw.requests[name]["pages"] >= 1
    for path in raw.raw_dir.iterdir():
        with gzip.open(path, "rt") as fh:
            text = fh.read()
        assert "ya29." not in text and "PRIVATE KEY" not in text


def test_event_window_and_backfill(google, key_file, tmp_path):
    run(google, key_file, tmp_path / "a", since=NOW - dt.timedelta(days=400))
    starts = {r["params"]["startTime"] for r in google.api_requests("reports.activities.list")}
    assert starts == {rfc3339(NOW - dt.timedelta(days=179))}     # within the API's 180 days

    google.reset()
    result, _ = run(google, key_file, tmp_path / "b", since=NOW - dt.timedelta(days=180),
                    first=True, backfill_days=7)
    starts = {r["params"]["startTime"] for r in google.api_requests("reports.activities.list")}
    assert starts == {rfc3339(NOW - dt.timedelta(days=7))}
    assert result.extra["events_window"]["start"] == "2026-03-13T12:00:00Z"

    google.reset()
    result, _ = run(google, key_file, tmp_path / "c", since=NOW)  # empty window: no requests
    assert google.api_requests("reports.activities.list") == []
    assert len(result.tables["events"]) == 0


# --- retries and failures -----------------------------------------------------------------------

def test_throttling_is_retried_after_retry_after(google, key_file, tmp_path, sleeps):
    google.add_user("ann@corp.example")
    google.throttle_next(2, retry_after=7)
    result, raw = run(google, key_file, tmp_path, sleeps=sleeps, max_attempts=3)
    assert len(result.tables["accounts"]) == 2
    statuses = [r["status"] for r in google.api_requests("directory.users.list")]
    assert statuses == [429, 429, 200]
    assert len(sleeps) == 2 and all(s >= 7 for s in sleeps)      # Retry-After honoured
    assert raw.requests["directory.users.list"]["pages"] == 1    # only answers are recorded


def test_transient_server_errors_are_retried(google, key_file, tmp_path, sleeps):
    google.add_activity("admin", "CREATE_USER", NOW - dt.timedelta(days=1), "ann@corp.example")
    google.fail_next(1, status=500)
    google.fail_next(1, status=503)
    result, _ = run(google, key_file, tmp_path, sleeps=sleeps, max_attempts=3)
    assert list(result.tables["events"]["action"]) == ["created"]
    assert [r["status"] for r in google.api_requests()][:3] == [500, 503, 200]
    assert len(sleeps) == 2 and all(s < 7 for s in sleeps)       # plain backoff, no Retry-After


def test_persistent_server_errors_are_a_source_error(google, key_file, tmp_path, sleeps):
    google.fail_next(10, status=503)
    message = fails(google, key_file, tmp_path, sleeps=sleeps, max_attempts=3)
    assert "Directory users.list" in message and "HTTP 503 after 3 attempt(s)" in message
    assert "/admin/directory/v1/users" in message and "?" not in message.split("(")[1]
    assert len(google.api_requests()) == 3 and len(sleeps) == 2


def test_persistent_throttling_is_a_source_error(google, key_file, tmp_path, sleeps):
    google.throttle_next(2, retry_after=1)
    message = fails(google, key_file, tmp_path, sleeps=sleeps, max_attempts=2)
    assert "HTTP 429 after 2 attempt(s)" in message and "max_attempts" in message


def test_wrong_key_signature_is_refused(google, key_file, tmp_path):
    # a key Google does not know (deleted, or never uploaded) for the same service account
    make_service_account_key(tmp_path / "other.json", SA, google.token_uri)
    shutil.copy(tmp_path / "other.json", key_file)
    message = fails(google, key_file, tmp_path)
    assert "invalid_grant: Invalid JWT Signature." in message and "create a new key" in message
    assert google.api_requests() == []                         # never a partial success
    assert [r["status"] for r in google.token_requests()] == [400]


def test_unknown_subject_is_refused(google, key_file, tmp_path):
    message = fails(google, key_file, tmp_path, delegated_admin="nobody@corp.example")
    assert "Invalid email or User ID" in message
    assert "delegated_admin nobody@corp.example is not a user" in message
    assert google.api_requests() == []


def test_scope_missing_from_delegation_is_named(google, key_file, tmp_path):
    google.delegate(client_id_for(SA), [DIRECTORY_SCOPE])
    message = fails(google, key_file, tmp_path)
    assert "unauthorized_client" in message and "Client is unauthorized" in message
    assert f"does not grant {REPORTS_SCOPE}" in message
    assert f"client ID {client_id_for(SA)}" in message and "Domain-wide delegation" in message
    assert google.api_requests() == []
    assert [r["status"] for r in google.token_requests()] == [401, 200, 401]  # both, then each


def test_no_delegation_at_all(google, key_file, tmp_path):
    google.delegate(client_id_for(SA), [])
    message = fails(google, key_file, tmp_path)
    assert "domain-wide delegation is not set up" in message
    assert DIRECTORY_SCOPE in message and REPORTS_SCOPE in message


def test_admin_without_reports_privilege_fails_the_source(google, key_file, tmp_path):
    google.add_user("helpdesk@corp.example", is_delegated_admin=True, privileges=[USERS_READ])
    message = fails(google, key_file, tmp_path, delegated_admin="helpdesk@corp.example")
    assert "Reports activities.list" in message and "403 forbidden" in message
    assert "Not Authorized to access this resource/api" in message
    assert "helpdesk@corp.example needs an admin role with the Admin console privilege " \
           "Reports" in message
    # users.list succeeded, the first Reports call was refused and not retried
    assert [r["status"] for r in google.api_requests()] == [200, 403]


def test_rejected_token_is_a_source_error(google, key_file, tmp_path):
    google.reject_tokens()
    message = fails(google, key_file, tmp_path)
    assert "Directory users.list" in message and "401" in message
    # google-auth fetched a new token after each 401 before giving up
    assert len(google.token_requests()) >= 2


def test_token_expiring_mid_run_is_refreshed(google, key_file, tmp_path):
    google.add_activity("admin", "CREATE_USER", NOW - dt.timedelta(days=1), "ann@corp.example")
    google.expire_tokens_after(3)
    result, _ = run(google, key_file, tmp_path)
    assert len(result.tables["events"]) == 1
    assert len(google.token_requests()) == 2
    assert [r["status"] for r in google.api_requests()].count(401) == 1


def test_repeated_page_token_is_a_source_error(google, key_file, tmp_path):
    google.add_users(1000)            # + admin: 3 pages, so page 2 carries a token
    google.repeat_next_token()
    with pytest.raises(SourceError, match="a second time") as err:
        run(google, key_file, tmp_path)
    assert "Directory users.list" in str(err.value)
    assert len(google.api_requests("directory.users.list")) == 2   # page 2 repeats page 1's
    with gzip.open(tmp_path / "raw" / "directory.users.list.jsonl.gz", "rt") as fh:
        assert len(fh.readlines()) == 2                 # the faulty page is kept as evidence


def test_unreachable_endpoint(google, key_file, tmp_path):
    google.add_user("ann@corp.example")
    with pytest.raises(SourceError, match="cannot reach") as err:
        run(google, key_file, tmp_path, api_endpoint="http://127.0.0.1:9/", max_attempts=1)
    assert "Directory users.list" in str(err.value)


# --- check --------------------------------------------------------------------------------------

def check(google, key_file, tmp_path, **options) -> tuple[list[str], Path]:
    src = source(google, key_file, **options)
    ctx = context(src, tmp_path)
    try:
        return GoogleWorkspace(sleep=_no_sleep).check(ctx), ctx.raw.raw_dir
    finally:
        ctx.raw.close()


def test_check_passes_with_one_call_per_api(google, key_file, tmp_path):
    google.add_users(3)
    problems, raw_dir = check(google, key_file, tmp_path)
    assert problems == []
    calls = google.api_requests()
    assert [r["api"] for r in calls] == ["directory.users.list", "reports.activities.list"]
    assert {r["params"]["maxResults"] for r in calls} == {"1"}
    assert not raw_dir.exists()                               # check records nothing


def test_check_names_the_missing_scope(google, key_file, tmp_path):
    google.delegate(client_id_for(SA), [REPORTS_SCOPE])
    problems, _ = check(google, key_file, tmp_path)
    assert len(problems) == 1 and f"does not grant {DIRECTORY_SCOPE}" in problems[0]
    assert REPORTS_SCOPE not in problems[0].split("does not grant")[1]
    assert google.api_requests() == []


def test_check_names_the_missing_privilege(google, key_file, tmp_path):
    google.add_user("reports-only@corp.example", is_delegated_admin=True, privileges=[REPORTS])
    problems, _ = check(google, key_file, tmp_path, delegated_admin="reports-only@corp.example")
    assert len(problems) == 1
    assert "Directory users.list" in problems[0] and "Users › Read" in problems[0]


# --- application-default credentials ------------------------------------------------------------

class MetadataCredentials(google_credentials.Credentials):
    """Stands in for workload-identity / metadata-server credentials: tokens minted by the
    emulator for the service account itself, with the scopes the platform granted."""

    def __init__(self, emulator: GoogleEmulator, email: str, scopes):
        super().__init__()
        self._emulator, self._email, self._scopes = emulator, email, list(scopes)
        self.refreshes = 0

    @property
    def service_account_email(self):
        return self._email

    def refresh(self, request):
        self.refreshes += 1
        self.token = self._emulator.mint_token(self._email, self._scopes)
        # google-auth keeps expiry as naive UTC
        self.expiry = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(hours=1)


def adc(monkeypatch, credentials, calls: list | None = None):
    def default(scopes=None, **kwargs):
        if calls is not None:
            calls.append(scopes)
        return credentials, "accessproof-test"
    monkeypatch.setattr(google_auth, "default", default)


def test_adc_service_account_holding_an_admin_role(google, key_file, tmp_path, monkeypatch):
    google.grant_admin_role(SA)
    calls: list = []
    adc(monkeypatch, MetadataCredentials(google, SA, SCOPES), calls)
    google.add_user("ann@corp.example")
    result, _ = run(google, key_file, tmp_path, service_account_file=None, delegated_admin=None)
    assert calls == [list(SCOPES)]
    assert result.principal == SA and result.extra["credentials"] == "application_default"
    assert len(result.tables["accounts"]) == 2
    assert google.token_requests() == []                      # no key, no JWT grant


def test_adc_token_without_the_reports_scope(google, key_file, tmp_path, monkeypatch):
    google.grant_admin_role(SA)
    adc(monkeypatch, MetadataCredentials(google, SA, [DIRECTORY_SCOPE]))
    message = fails(google, key_file, tmp_path, service_account_file=None, delegated_admin=None)
    assert "Reports activities.list" in message and "insufficient authentication scopes" \
        in message
    assert f"the token lacks the scope {REPORTS_SCOPE}" in message


def test_adc_key_file_with_delegation(google, key_file, tmp_path, monkeypatch):
    creds = service_account.Credentials.from_service_account_file(str(key_file), scopes=SCOPES)
    adc(monkeypatch, creds)
    result, _ = run(google, key_file, tmp_path, service_account_file=None)
    assert result.principal == f"{SA} as {ADMIN}"
    assert result.extra["credentials"] == "application_default_key"
    assert len(google.token_requests()) == 1 and {r["principal"] for r in google.api_requests()} \
        == {ADMIN}


def test_adc_keyless_delegation_through_sign_blob(google, key_file, tmp_path, monkeypatch):
    # The IAM endpoint is fixed in google-auth: point it at the emulator (edge case).
    monkeypatch.setattr(google_iam, "_IAM_SIGN_ENDPOINT",
                        google.url + "/v1/projects/-/serviceAccounts/{}:signBlob")
    adc(monkeypatch, MetadataCredentials(google, SA, IAM_SCOPES))
    google.remove_keys(SA)                                    # no user-managed key at all
    result, _ = run(google, key_file, tmp_path, service_account_file=None,
                    token_uri=google.token_uri)
    assert result.principal == f"{SA} as {ADMIN}"
    assert result.extra["credentials"] == "application_default_signblob"
    assert len(google.api_requests("iam.signBlob")) == 1
    assert {r["principal"] for r in google.api_requests()} == {ADMIN}


def test_no_credentials_at_all(google, key_file, tmp_path, monkeypatch):
    def default(scopes=None, **kwargs):
        raise auth_exceptions.DefaultCredentialsError("Your default credentials were not found")
    monkeypatch.setattr(google_auth, "default", default)
    message = fails(google, key_file, tmp_path, service_account_file=None)
    assert "no service_account_file is configured" in message
    assert "application-default credentials" in message


# --- the emulator speaks the documented protocol ------------------------------------------------

def _get(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                     if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_emulator_validates_requests(google, key_file):
    creds = service_account.Credentials.from_service_account_file(
        str(key_file), scopes=list(SCOPES)).with_subject(ADMIN)
    import google.auth.transport.requests as gr
    import requests
    session = requests.Session()
    session.trust_env = False
    creds.refresh(gr.Request(session))
    token = creds.token
    users = google.url + "/admin/directory/v1/users?"
    assert _get(users + "customer=my_customer")[0] == 401
    status, body = _get(users + "customer=my_customer", "ya29.made-up")
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED"
    assert _get(users, token)[0] == 400                                   # no customer/domain
    status, body = _get(users + "customer=my_customer&maxResults=501", token)
    assert status == 400 and "[1, 500]" in body["error"]["message"]
    status, body = _get(users + "customer=my_customer&fields=users(id,colour)", token)
    assert status == 400 and "colour" in body["error"]["message"]
    assert _get(users + "customer=C0ther", token)[0] == 403
    assert _get(users + "customer=my_customer&pageToken=made-up", token)[0] == 400

    reports = google.url + "/admin/reports/v1/activity/users/all/applications/"
    assert _get(reports + "admin?maxResults=1001", token)[0] == 400
    assert _get(reports + "admin?startTime=2026-03-01", token)[0] == 400   # not RFC 3339
    status, body = _get(reports + "admin?startTime=" +
                        urllib.parse.quote(rfc3339(NOW - dt.timedelta(days=181))), token)
    assert status == 400 and "180 days" in body["error"]["message"]
    assert _get(reports + "admin?startTime=2026-03-02T00:00:00Z&endTime=2026-03-01T00:00:00Z",
                token)[0] == 400
    status, body = _get(reports + "login", token)
    assert status == 200 and "items" not in body and body["kind"] == "admin#reports#activities"

    # a token with only the Directory scope: 403 with Google's error shape on Reports
    narrow = creds.with_scopes([DIRECTORY_SCOPE])
    narrow.refresh(gr.Request(session))
    status, body = _get(reports + "admin", narrow.token)
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
    assert body["error"]["errors"][0]["reason"] == "insufficientPermissions"
    assert body["error"]["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"


def test_emulator_activity_shapes_and_order(google):
    google.add_activity("admin", "SUSPEND_USER", NOW - dt.timedelta(days=2), "bob@corp.example")
    google.add_activity("admin", "ASSIGN_ROLE", NOW - dt.timedelta(days=1), "bob@corp.example")
    login = google.add_activity("login", "login_success", NOW, "bob@corp.example",
                                ip_address="198.51.100.4")
    assert login["actor"]["email"] == "bob@corp.example" and login["ipAddress"] == "198.51.100.4"
    assert login["events"][0]["type"] == "login"
    assert set(login["id"]) == {"time", "uniqueQualifier", "applicationName", "customerId"}
    assert login["id"]["time"] == "2026-03-20T12:00:00.000Z"
    token = google.mint_token(SA, [REPORTS_SCOPE])
    google.grant_admin_role(SA)
    status, body = _get(google.url + "/admin/reports/v1/activity/users/all/applications/admin",
                        token)
    assert status == 200
    names = [item["events"][0]["name"] for item in body["items"]]
    assert names == ["ASSIGN_ROLE", "SUSPEND_USER"]                       # newest first
    role = body["items"][0]["events"][0]
    assert role["type"] == "DELEGATED_ADMIN_SETTINGS"
    assert {"name": "USER_EMAIL", "value": "bob@corp.example"} in role["parameters"]
    assert body["items"][1]["events"][0]["type"] == "USER_SETTINGS"
    assert body["items"][1]["actor"]["email"] == ADMIN


def test_fields_selector():
    tree = parse_fields("nextPageToken,users(id,name/fullName,emails(address))")
    data = {"kind": "k", "nextPageToken": "t",
            "users": [{"id": "1", "name": {"fullName": "A B", "givenName": "A"},
                       "emails": [{"address": "a@x.example", "primary": True}], "x": 1}]}
    assert apply_fields(data, tree) == {
        "nextPageToken": "t",
        "users": [{"id": "1", "name": {"fullName": "A B"},
                   "emails": [{"address": "a@x.example"}]}]}
    with pytest.raises(ValueError):
        parse_fields("users(id")


def test_fixture_pages_map_like_the_api(tmp_path):
    """Hand-written pages in Google's documented shapes (tests/data/google) map as expected."""
    from integrations.google_workspace import build_accounts, build_events
    users = json.loads((FIXTURES / "users_page.json").read_text())["users"]
    accounts = build_accounts(users, source="ws", instance="C01")
    rows = {r["login"]: r for r in accounts.to_dict("records")}
    assert bool(rows["never@corp.example"]["never_logged_in"])
    assert pd.isna(rows["unknown@corp.example"]["never_logged_in"])   # no lastLoginTime
    assert not rows["gone@corp.example"]["enabled"]
    assert list(accounts.columns) == list(SCHEMAS["accounts"])        # conformed
    activities = json.loads((FIXTURES / "admin_activities_page.json").read_text())["items"]
    events = build_events({("admin", "CREATE_USER"): activities}, source="ws", instance="C01")
    assert list(events["target_account"]) == ["never@corp.example"]
    assert list(events["actor"]) == ["profile:100000000000000000001"]  # actor without email
