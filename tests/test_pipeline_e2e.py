"""collect → pack → verify through the command line, against moto and the CloudTrail emulator
over real HTTP; exit statuses per DESIGN §6."""

import datetime as dt
import json
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from accessproof_fakes.aws import reset_moto, start_moto
from accessproof_fakes.cloudtrail import CloudTrailEmulator, make_event
from collector.cli import cli

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def servers():
    server, url = start_moto()
    trail = CloudTrailEmulator().start()
    yield url, trail
    trail.stop()
    server.stop()


@pytest.fixture
def org(servers, tmp_path, monkeypatch):
    url, trail = servers
    reset_moto(url)
    trail.reset()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1")
    now = dt.datetime.now(UTC)
    today = now.date()
    left = today - dt.timedelta(days=3)
    for user in ("alice@corp.example", "bob@corp.example", "stranger"):
        iam.create_user(UserName=user)
        iam.create_login_profile(UserName=user, Password="Pw-123456789!")
    # bob left three days ago and signed in after leaving; his account is still enabled
    trail.add(make_event("ConsoleLogin", now - dt.timedelta(days=1), "bob@corp.example"))
    (tmp_path / "hr.csv").write_text(
        "id,mail,start,end\n"
        f"1,Alice@Corp.example ,2024-01-01,\n"
        f"2,bob@corp.example,2024-01-01,{left:%Y-%m-%d}\n")
    config = tmp_path / "accessproof.toml"
    config.write_text(f'''
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
max_attempts = 2
''')
    quarter = f"{now.year}-Q{(now.month - 1) // 3 + 1}"
    return config, quarter, trail, left


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_collect_pack_verify(org):
    config, quarter, _, left = org
    collected = run("collect", "--config", config)
    assert collected.exit_code == 0, collected.output
    assert "aws-prod" in collected.output and "3 accounts" in collected.output

    packed = run("pack", "--config", config, "--period", quarter)
    pack = Path(packed.output.strip().splitlines()[-1])
    assert pack.is_dir() and pack.parent.name == quarter
    results = json.loads((pack / "results.json").read_text())
    assert results["schema_version"] == 1 and results["period"]["in_progress"] is True
    found = {(e["control"], e["reason"], e["account"])
             for c in results["controls"] for e in c["exceptions"]}
    if left >= dt.date.fromisoformat(results["period"]["start"][:10]):
        assert ("deprovisioning-timely", "still_enabled", "bob@corp.example") in found
        assert ("no-access-after-termination", "login_after_termination",
                "bob@corp.example") in found
    assert ("orphaned-accounts", "no_hr_record", "stranger") in found
    # alice links despite case and spaces in the HR export
    assert not any(acc == "alice@corp.example" for c, _, acc in found
                   if c != "provisioning-approved")
    # accounts created this quarter without any ticketing source configured
    assert ("provisioning-approved", "no_ticket", "alice@corp.example") in found
    assert packed.exit_code == 1
    assert {s["name"]: s["status"] for s in results["sources"]} == {"hr": "ok", "aws-prod": "ok"}
    for key in ("generated_at", "tool_version", "period", "status", "sources", "controls"):
        assert key in results

    changes = (pack / "populations" / "aws-prod-account-changes.csv").read_text()
    assert changes.splitlines()[0].startswith("source,instance,account_id,account")
    verified = run("verify", pack)
    assert verified.exit_code == 0 and "verified" in verified.output
    (pack / "results.json").write_text((pack / "results.json").read_text().replace("1", "2", 1))
    assert run("verify", pack).exit_code == 1


def test_failed_source_makes_the_pack_incomplete_with_exit_2(org):
    config, quarter, trail, _ = org
    assert run("collect", "--config", config).exit_code == 0
    trail.deny_next(10)
    failed = run("collect", "--config", config, "--source", "aws-prod")
    assert failed.exit_code == 2
    assert "failed" in failed.output and "LookupEvents" in failed.output

    packed = run("pack", "--config", config, "--period", quarter)
    assert packed.exit_code == 2
    pack = Path(packed.output.strip().splitlines()[-1])
    results = json.loads((pack / "results.json").read_text())
    assert results["status"] == "incomplete"
    aws = next(s for s in results["sources"] if s["name"] == "aws-prod")
    assert aws["status"] == "failed" and "LookupEvents" in aws["error"]
    for control in results["controls"]:
        assert control["complete"] is False
        assert control["status"] in ("fail", "not_evaluable")
        assert control["status"] != "pass"


def test_bad_hr_input_exits_3_records_the_failure_and_still_collects_the_rest(org):
    config, quarter, _, _ = org
    hr = config.parent / "hr.csv"
    hr.write_text("id,mail,start,end\n1,a@corp.example,01/02/2024,\n")
    result = run("collect", "--config", config)
    assert result.exit_code == 3
    assert "hr.csv" in result.output and "line 2" in result.output
    store = config.parent / "store" / "snapshots"
    [hr_run] = list((store / "hr").iterdir())
    manifest = json.loads((hr_run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "date_format" in manifest["error"]
    assert not (hr_run / "tables").exists()
    assert len(list((store / "aws-prod").iterdir())) == 1      # AWS evidence still collected
    packed = run("pack", "--config", config, "--period", quarter)
    assert packed.exit_code == 2
    assert json.loads((Path(packed.output.strip().splitlines()[-1]) / "results.json")
                      .read_text())["status"] == "incomplete"


def test_run_collects_then_packs_the_current_quarter(org):
    config, quarter, _, _ = org
    result = run("run", "--config", config)
    assert result.exit_code == 1            # bob's and the stranger's exceptions
    pack = Path(result.output.strip().splitlines()[-1])
    assert pack.parent.name == quarter and (pack / "report.pdf").stat().st_size > 10_000
    assert len(list((config.parent / "store" / "snapshots" / "aws-prod").iterdir())) == 1
