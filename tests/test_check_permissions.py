"""`accessproof check` against moto and the CloudTrail emulator (real boto3 over HTTP), and
`accessproof permissions` (the grants each integration declares, in the form each system takes)."""

from __future__ import annotations

import json
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from accessproof_fakes.aws import enforce_moto_auth, reset_moto, start_moto
from accessproof_fakes.cloudtrail import CloudTrailEmulator
from collector import registry
from collector.cli import cli
from collector.integration import Integration, Permission
from integrations.aws_iam import AwsIam


@pytest.fixture(scope="module")
def servers():
    server, url = start_moto()
    trail = CloudTrailEmulator().start()
    yield url, trail
    trail.stop()
    server.stop()


@pytest.fixture
def env(servers, tmp_path, monkeypatch):
    url, trail = servers
    reset_moto(url)
    trail.reset()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_CONFIG_FILE": str(tmp_path / "none"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "hr.csv").write_text("id,mail,start,end\n1,alice@corp.example,2024-01-01,\n")
    config = tmp_path / "accessproof.toml"
    config.write_text(textwrap.dedent(f'''
        [store]
        path = "store"
        [hr]
        type = "csv"
        path = "hr.csv"
        date_format = "%Y-%m-%d"
        timezone = "UTC"
        [hr.columns]
        person_id = "id"
        email = "mail"
        hired_on = "start"
        terminated_on = "end"
        [[sources]]
        name = "aws-prod"
        type = "aws_iam"
        endpoint_url = "{url}"
        cloudtrail_endpoint_url = "{trail.url}"
        max_attempts = 1
        '''))
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1")
    iam.create_user(UserName="alice@corp.example")
    yield config, url, trail, iam
    enforce_moto_auth(url, False)


def check(config: Path, *args):
    return CliRunner().invoke(cli, ["check", "--config", str(config), *args])


def lines_of(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if line.split()[:1] == [name]]


def limited_principal(iam, actions: list[str], monkeypatch) -> None:
    iam.create_user(UserName="collector")
    iam.put_user_policy(UserName="collector", PolicyName="accessproof", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    key = iam.create_access_key(UserName="collector")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])


# --- check --------------------------------------------------------------------------------------


def test_check_passes_with_the_declared_permissions(env, monkeypatch):
    config, url, trail, iam = env
    granted = [p.name for p in AwsIam.permissions if p.name.startswith("iam:")]
    limited_principal(iam, granted, monkeypatch)
    enforce_moto_auth(url, True)        # moto now evaluates the principal's policy on each call
    result = check(config)
    assert result.exit_code == 0, result.output
    assert lines_of(result.output, "configuration")[0].split()[1] == "ok"
    assert lines_of(result.output, "hr") == ["hr                   ok    csv"]
    assert lines_of(result.output, "aws-prod") == ["aws-prod             ok    aws_iam"]
    assert result.output.strip().endswith("all checks passed")
    # one cheap call: LookupEvents with a single result
    [lookup] = trail.lookup_requests()
    assert lookup["body"]["MaxResults"] == 1
    assert not (config.parent / "store").exists()          # check writes nothing


def test_check_names_each_missing_permission(env, monkeypatch):
    config, url, trail, iam = env
    limited_principal(iam, ["iam:GenerateCredentialReport", "iam:GetCredentialReport"],
                      monkeypatch)
    enforce_moto_auth(url, True)
    trail.deny_next(1)
    result = check(config)
    assert result.exit_code == 2, result.output
    assert "aws-prod             FAIL  aws_iam" in result.output
    problems = [line.strip() for line in result.output.splitlines()
                if line.startswith("    - ")]
    assert len(problems) == 2, result.output
    assert problems[0].startswith("- missing permission iam:GetAccountAuthorizationDetails: "
                                  "GetAccountAuthorizationDetails was denied")
    assert "arn:aws:iam::123456789012:user/collector" in problems[0]
    assert problems[1].startswith("- missing permission cloudtrail:LookupEvents")
    assert "iam:GetCredentialReport" not in "".join(problems)
    assert "hr                   ok" in result.output
    assert "check FAILED: 1 source(s) with problems" in result.output


def test_check_reports_rejected_credentials(env, monkeypatch):
    config, url, _, _ = env
    enforce_moto_auth(url, True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
    result = check(config)
    assert result.exit_code == 2, result.output
    assert "rejected the credentials" in result.output and "GetCallerIdentity" in result.output


def test_check_source_filter_and_unknown_source(env):
    config, *_ = env
    result = check(config, "--source", "hr")
    assert result.exit_code == 0 and "aws-prod" not in result.output.split("configuration")[1] \
        .split("\n", 1)[1]
    result = check(config, "--source", "nope")
    assert result.exit_code == 3 and "no source named 'nope'" in result.output


def test_check_bad_configuration_exits_3(env):
    config, *_ = env
    config.write_text(config.read_text() + 'colour = "blue"\n')
    result = check(config)
    assert result.exit_code == 3, result.output
    assert "configuration        FAIL" in result.output
    assert "[sources 'aws-prod']" in result.output and "'colour'" in result.output


def test_check_bad_hr_export_exits_3(env):
    config, *_ = env
    (config.parent / "hr.csv").write_text("id,mail,start,end\n1,a@corp.example,01/02/2024,\n")
    result = check(config, "--source", "hr")
    assert result.exit_code == 3, result.output
    assert "hr                   FAIL  csv" in result.output
    assert "line 2" in result.output and "date_format" in result.output


# --- permissions --------------------------------------------------------------------------------


def _json_block(output: str, heading: str) -> dict:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}")) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("##"))
    return json.loads("\n".join(lines[start:end]))


def test_permissions_prints_the_aws_policy_as_iam_json():
    result = CliRunner().invoke(cli, ["permissions", "--source", "aws_iam"])
    assert result.exit_code == 0, result.output
    policy = _json_block(result.output, "AWS IAM policy document")
    assert policy["Version"] == "2012-10-17"
    [statement] = policy["Statement"]
    assert statement["Effect"] == "Allow" and statement["Resource"] == "*"
    assert set(statement["Action"]) == {"iam:GenerateCredentialReport", "iam:GetCredentialReport",
                                        "iam:GetAccountAuthorizationDetails",
                                        "cloudtrail:LookupEvents"}
    assume = _json_block(result.output, "Only when assume_role_arn is set")
    assert assume["Statement"][0]["Action"] == ["sts:AssumeRole"]
    assert assume["Statement"][0]["Resource"].startswith("arn:aws:iam::")

    only = CliRunner().invoke(cli, ["permissions", "--aws-policy"])
    assert only.exit_code == 0
    assert json.loads(only.output)["Statement"][0]["Action"] == sorted(statement["Action"])


@pytest.fixture
def declared_everywhere(monkeypatch):
    """Integrations declaring Google scopes, Graph permissions, Jira and ServiceNow roles."""
    class Google(Integration):
        type, title, tables = "fake_google", "Google Workspace (fake)", ("accounts",)
        permissions = (
            Permission("google-oauth-scope",
                       "https://www.googleapis.com/auth/admin.directory.user.readonly", "users"),
            Permission("google-oauth-scope",
                       "https://www.googleapis.com/auth/admin.reports.audit.readonly", "audit"))

    class Entra(Integration):
        type, title, tables = "fake_entra", "Entra ID (fake)", ("accounts",)
        permissions = (Permission("graph-application", "User.Read.All", "users"),
                       Permission("graph-application", "AuditLog.Read.All", "sign-ins"))

    class Tickets(Integration):
        type, title, tables = "fake_tickets", "Tickets (fake)", ("tickets",)
        permissions = (Permission("jira-project-permission", "Browse Projects", "read issues"),
                       Permission("servicenow-role", "itil", "read requests"))

    fakes = {cls.type: cls for cls in (Google, Entra, Tickets)}
    for name in fakes:
        monkeypatch.setitem(registry._entry_points(), name,
                            EntryPoint(name, "not_imported:X", registry.GROUP))
    load = registry._load
    monkeypatch.setattr(registry, "_load", lambda name: fakes.get(name) or load(name))
    return fakes


def test_permissions_groups_grants_by_system(declared_everywhere):
    google = CliRunner().invoke(cli, ["permissions", "--source", "fake_google"]).output
    assert "## Google OAuth scopes" in google
    assert ("https://www.googleapis.com/auth/admin.directory.user.readonly,"
            "https://www.googleapis.com/auth/admin.reports.audit.readonly") in google.splitlines()
    entra = CliRunner().invoke(cli, ["permissions", "--source", "fake_entra"]).output
    assert "## Microsoft Graph application permissions" in entra
    assert "  User.Read.All" in entra.splitlines() and "  AuditLog.Read.All" in entra.splitlines()
    tickets = CliRunner().invoke(cli, ["permissions", "--source", "fake_tickets"]).output
    assert "## Jira roles and permissions" in tickets and "  Browse Projects" in tickets
    assert "## ServiceNow roles" in tickets and "  itil" in tickets.splitlines()
    everything = CliRunner().invoke(cli, ["permissions"])
    assert everything.exit_code == 0
    for name, cls in declared_everywhere.items():
        assert f"# {name}: {cls.title}" in everything.output
    no_aws = CliRunner().invoke(cli, ["permissions", "--source", "fake_entra", "--aws-policy"])
    assert no_aws.exit_code == 3 and "no AWS IAM permissions" in no_aws.output
