"""entra_id against real MSAL and requests over real HTTPS: our Entra ID / Graph emulator on
127.0.0.1 with a throwaway CA (accessproof_fakes.graph)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import math
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest

from accessproof_fakes.graph import GraphEmulator, make_certificate
from collector.config import Secret, SourceConfig
from collector.errors import ConfigError, SourceError
from collector.integration import CollectContext
from collector.schema import SCHEMAS
from collector.store import RawRecorder
from integrations.entra_id import (AUDIT_ACTIVITIES, EntraId, GraphClient, Settings,
                                   build_accounts, build_events, guest_email, load_credential,
                                   odata_time)

DATA = Path(__file__).parent / "data" / "entra"
UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
SINCE = NOW - dt.timedelta(days=7)
TENANT = "0b7c6a5e-4d3c-4b2a-9f1e-8d7c6b5a4f3e"
CLIENT = "3a9e8d7c-6b5a-4f3e-8d2c-1b0a9f8e7d6c"
SECRET = "Qx8~correct-horse-battery-staple"
SECRET_ENV = "ENTRA_TEST_CLIENT_SECRET"


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    with GraphEmulator(TENANT, CLIENT, SECRET, ca_dir=tmp_path_factory.mktemp("graph-ca")) \
            as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def clean(graph, monkeypatch):
    graph.reset()
    monkeypatch.setenv(SECRET_ENV, SECRET)


def make_source(graph, tmp_path, name="entra", **options) -> SourceConfig:
    """Options for the emulator; pass ``key=None`` to leave a key out."""
    values = {"tenant_id": TENANT, "client_id": CLIENT,
              "client_secret": Secret(f"env:{SECRET_ENV}", tmp_path),
              "authority_host": graph.authority_host, "graph_url": graph.graph_url,
              "ca_bundle": graph.ca_path, "max_attempts": 3, **options}
    values = {k: v for k, v in values.items() if v is not None}
    return SourceConfig(name=name, type="entra_id", options=values, section=f"sources '{name}'",
                        file=str(tmp_path / "config.toml"))


def make_ctx(source: SourceConfig, tmp_path, *, since=SINCE, until=NOW, first=False):
    raw = RawRecorder(tmp_path / "raw")
    return CollectContext(name=source.name, config=source, now=NOW, events_since=since,
                          events_until=until, raw=raw, log=logging.getLogger("test.entra"),
                          first_collection=first)


def run(graph, tmp_path, *, since=SINCE, until=NOW, first=False, **options):
    """One collection; returns (result, raw recorder)."""
    source = make_source(graph, tmp_path, **options)
    EntraId.validate(source)
    ctx = make_ctx(source, tmp_path, since=since, until=until, first=first)
    try:
        return EntraId().collect(ctx), ctx.raw
    finally:
        ctx.raw.close()


def raw_pages(raw: RawRecorder, request: str) -> list[dict]:
    with gzip.open(raw.raw_dir / f"{request}.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def by_login(result) -> dict[str, dict]:
    return {row["login"]: row for row in result.tables["accounts"].to_dict("records")}


def events_of(result) -> list[tuple]:
    frame = result.tables["events"]
    return sorted(zip(frame["action"], frame["target_account"], frame["outcome"]))


@pytest.fixture(scope="module")
def key_pairs():
    """Two RSA key pairs (generating keys is slow): (key_pem, cert_pem) each."""
    return make_certificate("accessproof-test"), make_certificate("someone-else")


def cert_files(tmp_path, pair, *, separate=False, register=None):
    key_pem, cert_pem = pair
    if register is not None:
        register.register_certificate(cert_pem)
    if separate:
        (tmp_path / "app.crt").write_text(cert_pem)
        (tmp_path / "app.key").write_text(key_pem)
        return {"client_certificate": Secret("file:app.crt", tmp_path),
                "client_certificate_key": Secret("file:app.key", tmp_path)}
    (tmp_path / "app.pem").write_text(key_pem + cert_pem)
    return {"client_certificate": Secret("file:app.pem", tmp_path)}


# --- integration contract -----------------------------------------------------------------------

def test_declares_graph_application_permissions_and_options():
    assert [(p.system, p.name) for p in EntraId.permissions] == [
        ("graph-application", "User.Read.All"), ("graph-application", "AuditLog.Read.All")]
    assert "P1" in EntraId.permissions[1].why
    assert EntraId.type == "entra_id" and EntraId.tables == ("accounts", "events")
    assert EntraId.log_retention_days == 30
    assert set(EntraId.options) == {
        "tenant_id", "client_id", "client_secret", "client_certificate",
        "client_certificate_key", "authority_host", "graph_url", "ca_bundle", "max_attempts",
        "backfill_days", "page_size"}
    assert all(text.strip() for text in EntraId.options.values())


@pytest.mark.parametrize("change, key", [
    ({"tenant_id": None}, "tenant_id"),
    ({"tenant_id": "common"}, "tenant_id"),
    ({"tenant_id": "../evil"}, "tenant_id"),
    ({"client_id": "my-app"}, "client_id"),
    ({"client_secret": "literal-secret"}, "client_secret"),
    ({"client_secret": None}, "client_certificate"),
    ({"client_certificate": "BOTH"}, "client_secret"),
    ({"client_certificate_key": "KEY"}, "client_certificate_key"),
    ({"authority_host": "http://127.0.0.1:1"}, "authority_host"),
    ({"graph_url": "https://graph.microsoft.com/v1.0"}, "graph_url"),
    ({"page_size": 1000}, "page_size"),
    ({"backfill_days": 31}, "backfill_days"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": True}, "max_attempts"),
    ({"graph_ulr": "https://graph.microsoft.com"}, "graph_ulr"),
])
def test_bad_options_are_config_errors(graph, tmp_path, change, key):
    change = dict(change)
    for name in ("client_certificate", "client_certificate_key"):
        if name in change:
            change[name] = Secret(f"file:{name}.pem", tmp_path)
    source = make_source(graph, tmp_path, **change)
    with pytest.raises(ConfigError) as err:
        EntraId.validate(source)
    assert err.value.key == key and "config.toml" in str(err.value)


def test_missing_ca_bundle_is_a_config_error_when_collecting(graph, tmp_path):
    source = make_source(graph, tmp_path, ca_bundle="missing-ca.pem")
    EntraId.validate(source)               # may be validated where the file does not exist
    with pytest.raises(ConfigError) as err:
        run(graph, tmp_path, ca_bundle="missing-ca.pem")
    assert err.value.key == "ca_bundle" and "missing-ca.pem" in str(err.value)
    problems, _ = check(graph, tmp_path, ca_bundle="missing-ca.pem")
    assert len(problems) == 1 and "ca_bundle" in problems[0]
    assert not graph.requests


def test_ca_bundle_is_relative_to_the_config_file(graph, tmp_path):
    (tmp_path / "ca.pem").write_text(Path(graph.ca_path).read_text())
    settings = Settings.from_source(make_source(graph, tmp_path, ca_bundle="ca.pem"))
    assert settings.ca_bundle == str(tmp_path / "ca.pem")
    assert settings.users_top(True) == 500 and settings.users_top(False) == 999
    small = Settings.from_source(make_source(graph, tmp_path, page_size=700))
    assert small.users_top(True) == 500 and small.users_top(False) == 700


# --- accounts -----------------------------------------------------------------------------------

def seed_people(graph):
    graph.add_user("alice@corp.example", display_name="Alice Liddell", employee_id="E100",
                   created="2025-05-01T09:00:00Z",
                   last_success=NOW - dt.timedelta(days=1),
                   last_sign_in=NOW - dt.timedelta(hours=2))          # a later failed attempt
    graph.add_user("bob.upn@corp.example", mail="", display_name="Bob", employee_id="E200",
                   enabled=False, last_success=NOW - dt.timedelta(days=40))
    graph.add_user("carol@corp.example")                              # never signed in
    graph.add_user("dave@corp.example", sign_in_activity={             # only a failed attempt
        "lastSignInDateTime": "2026-03-15T08:00:00Z", "lastSignInRequestId": "r1",
        "lastNonInteractiveSignInDateTime": "0001-01-01T00:00:00Z",
        "lastNonInteractiveSignInRequestId": "",
        "lastSuccessfulSignInDateTime": None, "lastSuccessfulSignInRequestId": None})
    graph.add_guest("pat@partner.example", last_success=NOW - dt.timedelta(days=3))
    graph.add_guest("quinn_q@vendor.example", mail="")                # guest without mail


def test_accounts_mapping(graph, tmp_path):
    seed_people(graph)
    result, _ = run(graph, tmp_path)
    accounts = result.tables["accounts"]
    assert list(accounts.columns) == list(SCHEMAS["accounts"])
    rows = by_login(result)
    assert len(rows) == 6
    alice = rows["alice@corp.example"]
    assert alice["source"] == "entra" and alice["instance"] == TENANT
    assert alice["account_id"] == graph.user("alice@corp.example")["id"]
    assert alice["email"] == "alice@corp.example" and alice["display_name"] == "Alice Liddell"
    assert alice["employee_id"] == "E100" and alice["kind"] == "human"
    assert alice["enabled"] is True and alice["privileged"] is False
    assert alice["created_at"] == pd.Timestamp("2025-05-01T09:00:00Z")
    # lastSuccessfulSignInDateTime, not the later (failed) lastSignInDateTime
    assert alice["last_login_at"] == pd.Timestamp(NOW - dt.timedelta(days=1))
    assert alice["never_logged_in"] is False

    bob = rows["bob.upn@corp.example"]                 # no mail: the UPN is the email
    assert bob["email"] == "bob.upn@corp.example" and bob["enabled"] is False
    assert bob["employee_id"] == "E200"

    carol = rows["carol@corp.example"]                 # signInActivity returned, but empty
    assert carol["never_logged_in"] is True and pd.isna(carol["last_login_at"])

    dave = rows["dave@corp.example"]                   # fallback to lastSignInDateTime, flagged
    assert dave["last_login_at"] == pd.Timestamp("2026-03-15T08:00:00Z")
    assert dave["never_logged_in"] is False
    assert result.extra["last_login_fallback"] == ["dave@corp.example"]
    assert any("lastSignInDateTime" in text and "dave@corp.example" in text
               for text in result.limitations)

    pat = rows["pat_partner.example#EXT#@corp.onmicrosoft.com"]
    assert pat["kind"] == "human" and pat["email"] == "pat@partner.example"
    quinn = rows["quinn_q_vendor.example#EXT#@corp.onmicrosoft.com"]
    assert quinn["email"] == "quinn_q@vendor.example"   # decoded from the #EXT# UPN
    assert result.extra["guests"] == 2

    assert result.degraded is False and result.sign_in_data is True
    assert result.instances == [TENANT]
    assert CLIENT in result.principal and "accessproof-collector" in result.principal
    assert result.extra["granted_roles"] == ["AuditLog.Read.All", "User.Read.All"]
    assert result.extra["credential"] == "client secret"
    assert "not collected" in result.extra["privileged"]
    assert result.extra["token_scope"] == f"{graph.graph_url}/.default"


def test_users_requests_are_minimal_and_every_page_is_recorded(graph, tmp_path):
    graph.add_users(1001)
    result, raw = run(graph, tmp_path)
    assert len(result.tables["accounts"]) == 1001
    calls = graph.graph_requests("/v1.0/users")
    assert len(calls) == math.ceil(1001 / 500) == 3
    first = calls[0]["query"]
    assert first["$top"] == "500"
    assert first["$select"].split(",") == [
        "id", "userPrincipalName", "mail", "displayName", "accountEnabled", "createdDateTime",
        "employeeId", "userType", "signInActivity"]
    assert all("$skiptoken" in c["query"] for c in calls[1:])
    pages = raw_pages(raw, "graph.users")
    assert len(pages) == 3 and [len(p["body"]["value"]) for p in pages] == [500, 500, 1]
    assert raw.requests["graph.users"]["records"] == 1001
    assert raw.requests["graph.users"]["parameters"]["$top"] == "500"
    assert raw.requests["graph.users"]["endpoint"] == f"{graph.graph_url}/v1.0/users"
    for request in ("graph.auditLogs.directoryAudits", "graph.auditLogs.signIns"):
        assert raw.requests[request]["pages"] == len(
            graph.graph_requests("/v1.0/auditLogs/" + request.rsplit(".", 1)[1]))
    # one token, one discovery for the whole run
    assert len(graph.token_requests()) == 1
    assert sum(r["path"].endswith("openid-configuration") for r in graph.requests) == 1


def test_page_size_option(graph, tmp_path):
    graph.add_users(45)
    result, _ = run(graph, tmp_path, page_size=20)
    assert len(result.tables["accounts"]) == 45
    calls = graph.graph_requests("/v1.0/users")
    assert len(calls) == 3 and calls[0]["query"]["$top"] == "20"


def test_token_acquired_once_per_run(graph, tmp_path):
    graph.add_users(12)
    for i in range(3):
        graph.add_audit("Add user", NOW - dt.timedelta(hours=i + 1), f"user{i:04d}@corp.example")
        graph.add_sign_in(f"user{i:04d}@corp.example", NOW - dt.timedelta(hours=i + 1))
    graph.log_page_size = 1          # several log pages, each needing the bearer token
    try:
        run(graph, tmp_path, page_size=5)
    finally:
        graph.log_page_size = 100
    assert len(graph.graph_requests()) >= 9
    assert len(graph.token_requests()) == 1
    assert graph.token_requests()[0]["form"]["scope"] == f"{graph.graph_url}/.default"
    assert graph.token_requests()[0]["form"]["grant_type"] == "client_credentials"
    assert "client_secret" not in graph.token_requests()[0]["form"]     # never logged
    run(graph, tmp_path / "second")                      # a new run gets a new token
    assert len(graph.token_requests()) == 2


# --- events -------------------------------------------------------------------------------------

def test_directory_audits_mapping_and_server_side_filter(graph, tmp_path):
    graph.add_user("alice@corp.example")
    graph.add_user("bob@corp.example")
    graph.add_guest("pat@partner.example")
    guest = "pat_partner.example#EXT#@corp.onmicrosoft.com"
    t = NOW - dt.timedelta(days=2)
    graph.add_audit("Add user", t, "alice@corp.example")
    graph.add_audit("Add user", t, guest)
    graph.add_audit("Disable account", t + dt.timedelta(minutes=1), "bob@corp.example")
    graph.add_audit("Enable account", t + dt.timedelta(minutes=2), "bob@corp.example")
    graph.add_audit("Update user", t + dt.timedelta(minutes=3), "alice@corp.example",
                    modified={"AccountEnabled": (True, False)})
    graph.add_audit("Update user", t + dt.timedelta(minutes=4), "alice@corp.example",
                    modified={"AccountEnabled": (False, True)})
    graph.add_audit("Update user", t + dt.timedelta(minutes=5), "alice@corp.example",
                    modified={"JobTitle": ("Engineer", "Manager")})      # not an access change
    graph.add_audit("Delete user", t + dt.timedelta(minutes=6), "gone@corp.example")
    graph.add_audit("Hard delete user", t + dt.timedelta(minutes=7), "gone@corp.example")
    graph.add_audit("Restore user", t + dt.timedelta(minutes=8), "bob@corp.example")
    graph.add_audit("Add member to role", t + dt.timedelta(minutes=9), "bob@corp.example",
                    role="Global Administrator", actor=None, actor_app="MS-PIM")
    graph.add_audit("Add eligible member to role", t + dt.timedelta(minutes=10),
                    "bob@corp.example", role="User Administrator")
    graph.add_audit("Add member to group", t + dt.timedelta(minutes=11), guest,
                    group="Finance")
    graph.add_audit("Add user", t + dt.timedelta(minutes=12), "failed@corp.example",
                    result="failure")
    graph.add_audit("Add user", SINCE - dt.timedelta(minutes=1), "too-early@corp.example")
    graph.add_audit("Add user", NOW + dt.timedelta(minutes=1), "too-late@corp.example")
    graph.add_audit("Update application", t, None, category="ApplicationManagement")

    result, raw = run(graph, tmp_path)
    assert events_of(result) == sorted([
        ("created", "alice@corp.example", "success"),
        ("created", guest, "success"),
        ("disabled", "bob@corp.example", "success"),
        ("enabled", "bob@corp.example", "success"),
        ("disabled", "alice@corp.example", "success"),
        ("enabled", "alice@corp.example", "success"),
        ("deleted", "gone@corp.example", "success"),        # Graph's renamed UPN undone
        ("deleted", "gone@corp.example", "success"),
        ("enabled", "bob@corp.example", "success"),
        ("role_changed", "bob@corp.example", "success"),
        ("role_changed", "bob@corp.example", "success"),
        ("role_changed", guest, "success"),
        ("created", "failed@corp.example", "failure"),
    ])
    events = result.tables["events"]
    assert set(events["source"]) == {"entra"} and set(events["instance"]) == {TENANT}
    assert events["at"].is_monotonic_increasing
    by_target = events.set_index("target_account")
    assert by_target.loc[guest, "target_email"].tolist() == ["pat@partner.example"] * 2
    role = events[(events["action"] == "role_changed")
                  & (events["target_account"] == "bob@corp.example")]
    assert set(role["actor"]) == {"MS-PIM", "admin@corp.example"}

    # the window and the activities went to Graph; Graph (the emulator) applied them
    (call,) = graph.graph_requests("/v1.0/auditLogs/directoryAudits")
    query = call["query"]["$filter"]
    assert f"activityDateTime ge {odata_time(SINCE)}" in query
    assert f"activityDateTime le {odata_time(NOW)}" in query
    for activity in AUDIT_ACTIVITIES:
        assert f"activityDisplayName eq '{activity}'" in query
    assert "%20" in call["raw_query"] and "+" not in call["raw_query"]
    assert raw.requests["graph.auditLogs.directoryAudits"]["records"] == 14   # 17 - 3 filtered out


def test_sign_ins_success_and_failure(graph, tmp_path):
    graph.add_user("alice@corp.example")
    pat = graph.add_guest("pat@partner.example")
    t = NOW - dt.timedelta(days=1)
    graph.add_sign_in("alice@corp.example", t)
    graph.add_sign_in("alice@corp.example", t + dt.timedelta(minutes=1), error_code=50126)
    # a guest's sign-in log entry carries its home address; the object id links it
    graph.add_sign_in("pat@partner.example", t + dt.timedelta(minutes=2), user_id=pat["id"])
    # an account deleted since: only the sign-in log still knows it
    graph.add_sign_in("gone@corp.example", t + dt.timedelta(minutes=3))
    graph.add_sign_in("alice@corp.example", SINCE - dt.timedelta(seconds=1))   # outside

    result, _ = run(graph, tmp_path)
    logins = result.tables["events"]
    assert (logins["action"] == "login").all()
    assert sorted(zip(logins["target_account"], logins["outcome"])) == sorted([
        ("alice@corp.example", "success"), ("alice@corp.example", "failure"),
        ("pat_partner.example#EXT#@corp.onmicrosoft.com", "success"),
        ("gone@corp.example", "success")])
    gone = logins[logins["target_account"] == "gone@corp.example"].iloc[0]
    assert gone["target_email"] == "gone@corp.example"
    (call,) = graph.graph_requests("/v1.0/auditLogs/signIns")
    assert call["query"]["$filter"] == (f"createdDateTime ge {odata_time(SINCE)} and "
                                        f"createdDateTime le {odata_time(NOW)}")


def test_event_window_backfill_and_retention(graph, tmp_path):
    run(graph, tmp_path, since=NOW - dt.timedelta(days=90), first=True, backfill_days=3)
    (call,) = graph.graph_requests("/v1.0/auditLogs/directoryAudits")
    assert f"ge {odata_time(NOW - dt.timedelta(days=3))}" in call["query"]["$filter"]
    graph.reset()
    result, _ = run(graph, tmp_path / "b", since=NOW - dt.timedelta(days=90))
    (call,) = graph.graph_requests("/v1.0/auditLogs/signIns")
    assert f"ge {odata_time(NOW - dt.timedelta(days=30))}" in call["query"]["$filter"]
    assert result.extra["events_window"]["start"] == odata_time(NOW - dt.timedelta(days=30))
    graph.reset()
    run(graph, tmp_path / "c", since=NOW, until=NOW)              # empty window: no log calls
    assert not graph.graph_requests("/v1.0/auditLogs/signIns")
    assert len(graph.graph_requests("/v1.0/users")) == 1


# --- degradation --------------------------------------------------------------------------------

def test_no_premium_licence_degrades_and_says_so(graph, tmp_path):
    graph.premium = False
    graph.add_users(1000, last_success=NOW - dt.timedelta(days=1))
    graph.add_audit("Add user", NOW - dt.timedelta(days=1), "user0001@corp.example")
    graph.add_sign_in("user0001@corp.example", NOW - dt.timedelta(hours=1))

    result, raw = run(graph, tmp_path)
    assert result.degraded is True and result.sign_in_data is False
    accounts = result.tables["accounts"]
    assert len(accounts) == 1000                               # users still collected
    assert accounts["last_login_at"].isna().all()
    assert accounts["never_logged_in"].isna().all()            # unknown, not "never"
    assert events_of(result) == [("created", "user0001@corp.example", "success")]
    text = " | ".join(result.limitations)
    assert "Authentication_RequestFromNonPremiumTenantOrB2CTenant" in text
    assert "P1/P2" in text and "AuditLog.Read.All" in text
    assert "signInActivity" in text and "sign-in log" in text and "7 days" in text
    assert result.extra["sign_in_activity"] is False and result.extra["sign_in_log"] is False

    calls = graph.graph_requests("/v1.0/users")
    assert [c["status"] for c in calls] == [403, 200, 200]      # 1 refused + ⌈1000/999⌉
    assert "signInActivity" not in calls[1]["query"]["$select"]
    assert calls[1]["query"]["$top"] == "999"
    # the refusals are evidence too
    refused = raw_pages(raw, "graph.users")
    assert refused[0]["body"]["error"]["code"] == \
        "Authentication_RequestFromNonPremiumTenantOrB2CTenant"
    assert raw.requests["graph.users"]["records"] == 0
    assert raw.requests["graph.users-without-signInActivity"]["pages"] == 2
    assert raw_pages(raw, "graph.auditLogs.signIns")[0]["body"]["error"]["code"] == \
        "Authentication_RequestFromNonPremiumTenantOrB2CTenant"


def test_missing_audit_permission_fails_naming_it(graph, tmp_path):
    graph.permissions = {"User.Read.All"}
    graph.add_user("alice@corp.example")
    with pytest.raises(SourceError) as err:
        run(graph, tmp_path)
    assert "AuditLog.Read.All" in str(err.value) and "directory audit log" in str(err.value)
    assert err.value.source == "entra"


def test_missing_user_permission_fails_naming_it(graph, tmp_path):
    graph.permissions = {"AuditLog.Read.All"}
    with pytest.raises(SourceError) as err:
        run(graph, tmp_path)
    assert "User.Read.All" in str(err.value) and "403" in str(err.value)


# --- retries and failures -----------------------------------------------------------------------

def test_throttling_is_retried_after_retry_after(graph, tmp_path):
    graph.add_users(3)
    graph.throttle_next(1, retry_after=1, path="/v1.0/users")
    result, raw = run(graph, tmp_path)
    assert len(result.tables["accounts"]) == 3
    calls = graph.graph_requests("/v1.0/users")
    assert [c["status"] for c in calls] == [429, 200]
    assert calls[1]["at"] - calls[0]["at"] >= 0.95             # Retry-After: 1 honoured
    assert raw.requests["graph.users"]["pages"] == 1             # the 429 is not a page


def test_persistent_server_errors_are_a_source_error(graph, tmp_path):
    graph.fail_next(10, status=503, path="/v1.0/users")
    with pytest.raises(SourceError) as err:
        run(graph, tmp_path, max_attempts=2)
    assert "503" in str(err.value) and "list users" in str(err.value)
    assert len(graph.graph_requests("/v1.0/users")) == 2         # capped attempts


def test_wrong_secret_names_the_aadsts_code(graph, tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    with pytest.raises(SourceError) as err:
        run(graph, tmp_path)
    message = str(err.value)
    assert "AADSTS7000215" in message and "invalid_client" in message
    assert "client_secret" in message and "not-the-secret" not in message
    assert not graph.graph_requests()                            # no Graph call without a token


def test_unknown_tenant_is_a_source_error(graph, tmp_path):
    with pytest.raises(SourceError) as err:
        run(graph, tmp_path, tenant_id="11111111-2222-4333-8444-555555555555")
    assert "AADSTS90002" in str(err.value) and "tenant_id" in str(err.value)


def test_unset_secret_variable_is_a_config_error(graph, tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(ConfigError) as err:
        run(graph, tmp_path)
    assert err.value.key == "client_secret" and SECRET_ENV in str(err.value)


def test_rejected_bearer_token_is_a_source_error(graph, tmp_path):
    source = make_source(graph, tmp_path)
    settings = Settings.from_source(source)
    credential, _ = load_credential(settings, source)
    with GraphClient("entra", settings, credential) as client:
        client.token()
        graph.revoke_tokens()
        with pytest.raises(SourceError) as err:
            client.users()
    assert "401" in str(err.value) and "InvalidAuthenticationToken" in str(err.value)


def test_foreign_next_link_is_refused(graph, tmp_path):
    graph.add_users(5)
    # same emulator under another host name: following the link would work (and leak the token)
    port = urllib.parse.urlsplit(graph.graph_url).port
    graph.next_link_base(f"https://localhost:{port}")
    with pytest.raises(SourceError) as err:
        run(graph, tmp_path, page_size=2)
    assert "refused to follow @odata.nextLink" in str(err.value)
    assert "skiptoken" not in str(err.value)                     # URL shown without its query
    assert len(graph.graph_requests("/v1.0/users")) == 1


def test_repeated_next_link_is_a_source_error(graph, tmp_path):
    graph.add_users(7)
    graph.repeat_next_link()
    with pytest.raises(SourceError) as err:
        run(graph, tmp_path, page_size=2)
    assert "a second time" in str(err.value)
    assert len(graph.graph_requests("/v1.0/users")) == 3


# --- credentials and TLS ------------------------------------------------------------------------

@pytest.mark.parametrize("separate", [False, True])
def test_certificate_credential(graph, tmp_path, key_pairs, separate):
    graph.add_user("alice@corp.example")
    files = cert_files(tmp_path, key_pairs[0], separate=separate, register=graph)
    result, _ = run(graph, tmp_path, client_secret=None, **files)
    assert list(result.tables["accounts"]["login"]) == ["alice@corp.example"]
    (token,) = graph.token_requests()
    assert token["credential"] == "assertion" and token["status"] == 200
    assert token["form"]["client_assertion_type"].endswith("jwt-bearer")
    assert result.extra["credential"].startswith("certificate ")


def test_unregistered_certificate_names_the_aadsts_code(graph, tmp_path, key_pairs):
    graph.register_certificate(key_pairs[1][1])
    files = cert_files(tmp_path, key_pairs[0])    # not uploaded to the app registration
    with pytest.raises(SourceError) as err:
        run(graph, tmp_path, client_secret=None, **files)
    assert "AADSTS700027" in str(err.value) and "client_certificate" in str(err.value)


def test_certificate_and_key_that_do_not_match(graph, tmp_path, key_pairs):
    (tmp_path / "mixed.pem").write_text(key_pairs[0][0] + key_pairs[1][1])
    with pytest.raises(ConfigError) as err:
        run(graph, tmp_path, client_secret=None,
            client_certificate=Secret("file:mixed.pem", tmp_path))
    assert "does not belong" in str(err.value)
    assert not graph.requests


def test_untrusted_tls_is_a_source_error(graph, tmp_path, monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SourceError) as err:
        run(graph, tmp_path, ca_bundle=None, max_attempts=1)
    assert "TLS" in str(err.value) and "ca_bundle" in str(err.value)


def test_requests_ca_bundle_is_honoured(graph, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", graph.ca_path)
    graph.add_user("alice@corp.example")
    result, _ = run(graph, tmp_path, ca_bundle=None)
    assert len(result.tables["accounts"]) == 1


# --- check --------------------------------------------------------------------------------------

def check(graph, tmp_path, **options):
    source = make_source(graph, tmp_path, **options)
    ctx = make_ctx(source, tmp_path)
    try:
        return EntraId().check(ctx), ctx.raw
    finally:
        ctx.raw.close()


def test_check_passes_with_one_cheap_call_each(graph, tmp_path):
    graph.add_users(3)
    problems, raw = check(graph, tmp_path)
    assert problems == []
    assert raw.requests == {}                                   # check records nothing
    assert [(r["path"], r["query"].get("$top")) for r in graph.graph_requests()] == [
        ("/v1.0/users", "1"), ("/v1.0/auditLogs/directoryAudits", "1"),
        ("/v1.0/auditLogs/signIns", "1")]


def test_check_names_missing_permission_and_licence(graph, tmp_path):
    graph.permissions = {"User.Read.All"}
    problems, _ = check(graph, tmp_path)
    assert len(problems) == 3
    assert all("AuditLog.Read.All" in p for p in problems)
    assert "signInActivity" in problems[0] and "directory audit log" in problems[1]

    graph.reset()
    graph.premium = False
    problems, _ = check(graph, tmp_path)
    assert len(problems) == 2
    assert all("P1 or P2 licence" in p for p in problems)

    graph.reset()
    graph.permissions = set()
    problems, _ = check(graph, tmp_path)
    assert any("User.Read.All" in p for p in problems)


def test_check_reports_a_refused_token(graph, tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "wrong")
    problems, _ = check(graph, tmp_path)
    assert len(problems) == 1 and "AADSTS7000215" in problems[0]


# --- mapping against documented Graph shapes (no emulator) --------------------------------------

def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def test_documented_users_page_mapping():
    users = load("users_page.json")["value"]
    accounts, notes = build_accounts(users, source="entra", instance=TENANT,
                                     sign_in_activity=True)
    rows = {r["login"]: r for r in accounts.to_dict("records")}
    adele = rows["AdeleV@contoso.com"]
    assert adele["last_login_at"] == pd.Timestamp("2026-03-18T16:41:33Z")
    assert adele["employee_id"] == "1001" and adele["never_logged_in"] is False
    admin = rows["admin@contoso.onmicrosoft.com"]
    assert admin["email"] == "admin@contoso.onmicrosoft.com"
    assert admin["last_login_at"] == pd.Timestamp("2026-03-10T09:12:40Z")   # fallback
    assert notes["last_login_fallback"] == ["admin@contoso.onmicrosoft.com"]
    alex = rows["alex.wilber_fabrikam.com#EXT#@contoso.onmicrosoft.com"]
    assert alex["email"] == "alex.wilber@fabrikam.com" and alex["never_logged_in"] is True
    megan = rows["megan_northwind.example#EXT#@contoso.onmicrosoft.com"]
    assert megan["email"] == "megan@northwind.example" and megan["enabled"] is False
    assert megan["never_logged_in"] is True and pd.isna(megan["created_at"])  # 0001-01-01
    assert notes["guests"] == 2
    # without signInActivity nothing is known about sign-ins
    unknown, _ = build_accounts(users, source="entra", instance=TENANT, sign_in_activity=False)
    assert unknown["never_logged_in"].isna().all() and unknown["last_login_at"].isna().all()


def test_documented_audit_and_sign_in_mapping():
    users = load("users_page.json")["value"]
    events = build_events(load("directory_audits.json")["value"],
                          load("sign_ins.json")["value"], users, source="entra",
                          instance=TENANT)
    rows = [(r["action"], r["target_account"], r["outcome"], r["actor"], r["target_email"])
            for r in events.to_dict("records")]
    assert rows == [
        ("disabled", "AdeleV@contoso.com", "success", "admin@contoso.onmicrosoft.com",
         "AdeleV@contoso.com"),
        ("deleted", "johanna.l@contoso.com", "success", "admin@contoso.onmicrosoft.com",
         "johanna.l@contoso.com"),
        ("role_changed", "AdeleV@contoso.com", "success", "MS-PIM", "AdeleV@contoso.com"),
        ("created", "new.hire@contoso.com", "failure", "admin@contoso.onmicrosoft.com",
         "new.hire@contoso.com"),
        ("login", "AdeleV@contoso.com", "failure", "AdeleV@contoso.com", "AdeleV@contoso.com"),
        ("login", "AdeleV@contoso.com", "success", "AdeleV@contoso.com", "AdeleV@contoso.com"),
        ("login", "alex.wilber_fabrikam.com#EXT#@contoso.onmicrosoft.com", "success",
         "alex.wilber@fabrikam.com", "alex.wilber@fabrikam.com"),
    ]
    assert events["at"].iloc[0] == pd.Timestamp("2026-03-09T21:20:02.721537Z")


@pytest.mark.parametrize("upn, email", [
    ("alice_partner.example#EXT#@corp.onmicrosoft.com", "alice@partner.example"),
    ("first_last_sub.example.org#EXT#@t.onmicrosoft.com", "first_last@sub.example.org"),
    ("ALICE_Partner.Example#ext#@corp.onmicrosoft.com", "ALICE@Partner.Example"),
    ("alice@corp.example", None),
    ("nounderscore#EXT#@corp.onmicrosoft.com", None),
])
def test_guest_email(upn, email):
    assert guest_email(upn) == email
