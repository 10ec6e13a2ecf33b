"""Configuration (collector/config.py, DESIGN §8) and the error hierarchy (collector/errors.py).

Every refusal must name the file, the section and the key at fault, and carry exit status 3.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import cli
from collector.config import (Config, PolicyConfig, ScheduleConfig, Secret, load_config,
                              validate_sources)
from collector.errors import AccessproofError, ConfigError, InputError, SourceError

HR_BLOCK = """
[hr]
type = "csv"
path = "hr.csv"
date_format = "%Y-%m-%d"
timezone = "America/New_York"
"""

AWS_BLOCK = """
[[sources]]
name = "aws-prod"
type = "aws_iam"
region = "us-east-1"
"""

FULL = """
[store]
path = "./evidence"

[policy]
deprovision_sla_hours = 48
login_grace_minutes = 15

[hr]
type = "csv"
path = "exports/hr.csv"
date_format = "%m/%d/%Y"
timezone = "America/New_York"
termination_effective = "start_of_day"
delimiter = ";"
[hr.columns]
person_id = "Employee ID"
email = "Work Email"
name = "Name"
hired_on = "Hire Date"
terminated_on = "Termination Date"
manager_email = "Manager Email"
worker_type = "Worker Type"

[service_accounts]
path = "service-accounts.toml"

[[sources]]
name = "aws-prod"
type = "aws_iam"
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:5000"
privileged_groups = ["admins", "breakglass"]
backfill_days = 30

[[sources]]
name = "jira"
type = "jira"
url = "https://corp.atlassian.net"
email = "compliance-bot@corp.example"
api_token = "env:ACCESSPROOF_TEST_JIRA_TOKEN"
jql = "project = ACCESS"
[sources.fields]
subject_email = "customfield_10050"
target_system = "customfield_10051"
[sources.kinds]
"Access Request" = "access_request"
"Offboarding" = "offboarding"
"""


def write_config(tmp_path: Path, text: str, name: str = "accessproof.toml") -> Path:
    """Write a config into a sub-directory of tmp_path, so 'relative to the config file' differs
    from 'relative to tmp_path' and from the working directory."""
    directory = tmp_path / "conf"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def minimal(extra: str = "", *, hr: str = HR_BLOCK, sources: str = AWS_BLOCK) -> str:
    return hr + sources + extra


def refused(path: Path, *, section: str | None, key: str | None = None) -> ConfigError:
    """Load ``path``, expect a ConfigError naming file, section and key; return it."""
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    err = info.value
    message = str(err)
    assert err.exit_code == 3
    assert path.name in message, message
    assert err.file is not None and Path(err.file).name == path.name
    if section is not None:
        assert f"[{section}]" in message, message
        assert err.section == section
    if key is not None:
        assert f"key '{key}'" in message, message
        assert err.key == key
    return err


# --- a full valid configuration ------------------------------------------------------------------


@pytest.fixture
def full(tmp_path, monkeypatch) -> Config:
    # a different working directory: relative paths must follow the config file, not the cwd
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return load_config(write_config(tmp_path, FULL))


def test_full_config_store_path_is_relative_to_the_config_file(full, tmp_path):
    conf_dir = (tmp_path / "conf").resolve()
    assert full.file == conf_dir / "accessproof.toml"
    assert full.base_dir == conf_dir
    assert full.store_path.resolve() == conf_dir / "evidence"
    assert full.service_accounts_path.resolve() == conf_dir / "service-accounts.toml"


def test_full_config_policy_overrides_and_defaults(full):
    assert full.policy.deprovision_sla_hours == 48
    assert full.policy.login_grace_minutes == 15
    # not given: defaults of DESIGN §8
    assert full.policy.approval_grace_minutes == 0
    assert full.policy.inactive_days == 90


def test_policy_defaults_when_section_absent(tmp_path):
    config = load_config(write_config(tmp_path, minimal()))
    assert config.policy == PolicyConfig(deprovision_sla_hours=24, login_grace_minutes=0,
                                         approval_grace_minutes=0, inactive_days=90)
    # [store] absent: ./evidence next to the config file
    assert config.store_path.resolve() == (tmp_path / "conf" / "evidence").resolve()
    assert config.service_accounts_path is None


def test_full_config_hr_section(full, tmp_path):
    hr = full.hr
    assert hr.type == "csv"
    assert hr.name == "hr"
    assert Path(hr.path).resolve() == (tmp_path / "conf" / "exports" / "hr.csv").resolve()
    assert hr.date_format == "%m/%d/%Y"
    assert hr.timezone == "America/New_York"
    assert str(hr.tz) == "America/New_York"
    assert hr.termination_effective == "start_of_day"
    assert hr.columns == {
        "person_id": "Employee ID", "email": "Work Email", "name": "Name",
        "hired_on": "Hire Date", "terminated_on": "Termination Date",
        "manager_email": "Manager Email", "worker_type": "Worker Type"}
    assert hr.options == {"delimiter": ";"}


def test_hr_termination_effective_defaults_to_end_of_day(tmp_path):
    config = load_config(write_config(tmp_path, minimal()))
    assert config.hr.termination_effective == "end_of_day"
    assert config.hr.columns == {}


def test_hr_absolute_path_is_kept(tmp_path):
    absolute = tmp_path / "abs" / "people.csv"
    hr = HR_BLOCK.replace('path = "hr.csv"', f'path = "{absolute.as_posix()}"')
    config = load_config(write_config(tmp_path, minimal(hr=hr)))
    assert Path(config.hr.path) == absolute


def test_full_config_sources_with_options(full):
    assert [s.name for s in full.sources] == ["aws-prod", "jira"]
    aws, jira = full.sources
    assert aws.type == "aws_iam"
    assert aws.section == "sources 'aws-prod'"
    assert aws.options == {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:5000",
                           "privileged_groups": ["admins", "breakglass"], "backfill_days": 30}
    assert "name" not in aws.options and "type" not in aws.options
    assert aws.get("region") == "eu-west-1"
    assert aws.get("assume_role_arn", "none") == "none"
    assert aws.require("backfill_days") == 30
    assert full.source("jira") is jira
    assert jira.type == "jira"
    assert jira.options["fields"] == {"subject_email": "customfield_10050",
                                      "target_system": "customfield_10051"}
    assert jira.options["kinds"] == {"Access Request": "access_request",
                                     "Offboarding": "offboarding"}
    assert isinstance(jira.options["api_token"], Secret)
    assert jira.options["api_token"].reference == "env:ACCESSPROOF_TEST_JIRA_TOKEN"


def test_source_lookup_and_require_name_what_is_missing(full):
    with pytest.raises(ConfigError) as info:
        full.source("okta")
    assert "no source named 'okta'" in str(info.value)
    assert "aws-prod, jira" in str(info.value)
    assert info.value.exit_code == 3
    with pytest.raises(ConfigError) as info:
        full.source("aws-prod").require("assume_role_arn")
    message = str(info.value)
    assert "accessproof.toml" in message
    assert "[sources 'aws-prod']" in message and "key 'assume_role_arn'" in message


def test_full_config_schedule_defaults(full):
    assert full.schedule == ScheduleConfig()
    assert full.schedule.timezone == "UTC"
    assert full.schedule.collect == "0 2 * * *"
    assert full.schedule.pack == "0 6 1 1,4,7,10 *"


def test_schedule_overrides(tmp_path):
    config = load_config(write_config(tmp_path, minimal("""
        [schedule]
        timezone = "Europe/Berlin"
        collect = "30 1 * * *"
        """)))
    assert config.schedule == ScheduleConfig(timezone="Europe/Berlin", collect="30 1 * * *",
                                             pack="0 6 1 1,4,7,10 *")


# --- secrets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("client_secret", "abc"),
    ("api_token", "x"),
    ("password", "hunter2"),
    ("private_key", "-----BEGIN PRIVATE KEY-----"),
    ("password", 12345),   # not a string, still a literal
])
def test_literal_secret_in_a_source_is_refused(tmp_path, key, value):
    literal = f'"{value}"' if isinstance(value, str) else str(value)
    path = write_config(tmp_path, minimal(sources=f"""
        [[sources]]
        name = "jira"
        type = "jira"
        url = "https://corp.atlassian.net"
        {key} = {literal}
        """))
    err = refused(path, section="sources 'jira'", key=key)
    message = str(err)
    assert "literal secret" in message
    assert "env:NAME" in message and "file:PATH" in message
    # the refusal must not echo the secret back into logs
    if isinstance(value, str):
        assert f"'{value}'" not in message and f'"{value}"' not in message


def test_literal_secret_in_a_nested_source_table_is_refused(tmp_path):
    path = write_config(tmp_path, minimal(sources="""
        [[sources]]
        name = "jira"
        type = "jira"
        [sources.auth]
        password = "hunter2"
        """))
    refused(path, section="sources 'jira'.auth", key="password")


def test_literal_secret_in_hr_is_refused(tmp_path):
    path = write_config(tmp_path, minimal(hr=HR_BLOCK + 'api_token = "tok"\n'))
    refused(path, section="hr", key="api_token")


def test_literal_secret_in_store_is_refused(tmp_path):
    path = write_config(tmp_path, minimal("""
        [store]
        path = "./evidence"
        secret_access_key = "wJalrXUtnFEMI/K7MDENG"
        """))
    refused(path, section="store", key="secret_access_key")


def test_env_reference_is_accepted_and_resolved_only_on_reveal(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCESSPROOF_TEST_JIRA_TOKEN", raising=False)
    # unset at load time: loading must not try to resolve it
    config = load_config(write_config(tmp_path, FULL))
    secret = config.source("jira").options["api_token"]
    assert isinstance(secret, Secret)
    assert secret.kind == "env"
    assert secret.path is None
    with pytest.raises(ConfigError) as info:
        secret.reveal()
    assert "ACCESSPROOF_TEST_JIRA_TOKEN" in str(info.value)
    assert info.value.exit_code == 3
    # read when asked, not cached at load time
    monkeypatch.setenv("ACCESSPROOF_TEST_JIRA_TOKEN", "s3cr3t-value-1")
    assert secret.reveal() == "s3cr3t-value-1"
    monkeypatch.setenv("ACCESSPROOF_TEST_JIRA_TOKEN", "s3cr3t-value-2")
    assert secret.reveal() == "s3cr3t-value-2"


def test_file_reference_is_relative_to_the_config_file(tmp_path, monkeypatch):
    path = write_config(tmp_path, minimal(sources="""
        [[sources]]
        name = "entra"
        type = "entra_id"
        client_secret = "file:secrets/entra.txt"
        client_certificate = "file:certs/missing.pem"
        """))
    secrets_dir = tmp_path / "conf" / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "entra.txt").write_text("  the-file-secret\n", encoding="utf-8")
    # a decoy relative to the working directory must not be read
    cwd = tmp_path / "cwd"
    (cwd / "secrets").mkdir(parents=True)
    (cwd / "secrets" / "entra.txt").write_text("wrong", encoding="utf-8")
    monkeypatch.chdir(cwd)

    config = load_config(path)  # a missing secret file is not an error until it is read
    options = config.source("entra").options
    secret = options["client_secret"]
    assert secret.kind == "file"
    assert secret.path.resolve() == (secrets_dir / "entra.txt").resolve()
    assert secret.reveal() == "the-file-secret"

    missing = options["client_certificate"]
    with pytest.raises(ConfigError) as info:
        missing.reveal()
    assert "missing.pem" in str(info.value)
    assert info.value.exit_code == 3


def test_file_reference_absolute_path(tmp_path):
    secret_file = tmp_path / "abs-secret.txt"
    secret_file.write_text("absolute-secret", encoding="utf-8")
    secret = Secret(f"file:{secret_file}", tmp_path / "somewhere-else")
    assert secret.path == secret_file
    assert secret.reveal() == "absolute-secret"


def test_secret_repr_never_contains_the_value(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCESSPROOF_TEST_JIRA_TOKEN", "topsecret-123")
    config = load_config(write_config(tmp_path, FULL))
    secret = config.source("jira").options["api_token"]
    assert secret.reveal() == "topsecret-123"
    for text in (repr(secret), str(secret), f"{secret}", repr(config.source("jira")),
                 repr(config), str(config.digest())):
        assert "topsecret-123" not in text
    assert "env:ACCESSPROOF_TEST_JIRA_TOKEN" in repr(secret)

    file_secret = tmp_path / "token.txt"
    file_secret.write_text("file-topsecret", encoding="utf-8")
    fs = Secret(f"file:{file_secret}", tmp_path)
    assert fs.reveal() == "file-topsecret"
    assert "file-topsecret" not in repr(fs) and "file-topsecret" not in str(fs)


def test_empty_secret_reference_is_refused(tmp_path):
    path = write_config(tmp_path, minimal(sources="""
        [[sources]]
        name = "jira"
        type = "jira"
        api_token = "env:"
        """))
    err = refused(path, section="sources 'jira'", key="api_token")
    assert "empty secret reference" in str(err)


def test_empty_secret_value_is_not_a_literal(tmp_path):
    # an empty value carries no secret (e.g. an optional key left blank)
    config = load_config(write_config(tmp_path, minimal(sources="""
        [[sources]]
        name = "jira"
        type = "jira"
        api_token = ""
        """)))
    assert config.source("jira").options["api_token"] == ""


# --- errors naming file, section and key ---------------------------------------------------------


def test_missing_hr_section(tmp_path):
    err = refused(write_config(tmp_path, minimal(hr="")), section="hr")
    assert "required" in str(err)


@pytest.mark.parametrize("key", ["type", "path", "timezone"])
def test_missing_hr_key(tmp_path, key):
    hr = "\n".join(line for line in HR_BLOCK.splitlines() if not line.startswith(f"{key} ="))
    err = refused(write_config(tmp_path, minimal(hr=hr)), section="hr", key=key)
    assert "required" in str(err)


def test_missing_date_format_says_dates_are_never_guessed(tmp_path):
    hr = HR_BLOCK.replace('date_format = "%Y-%m-%d"\n', "")
    err = refused(write_config(tmp_path, minimal(hr=hr)), section="hr", key="date_format")
    assert "required" in str(err)
    assert "never guessed" in str(err)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "america/new_york", "EST+5 ", ""])
def test_unknown_hr_time_zone(tmp_path, zone):
    hr = HR_BLOCK.replace('"America/New_York"', f'"{zone}"')
    err = refused(write_config(tmp_path, minimal(hr=hr)), section="hr", key="timezone")
    assert "unknown time zone" in str(err)
    assert repr(zone) in str(err)


def test_time_zone_naming_a_tz_directory_is_a_config_error(tmp_path):
    hr = HR_BLOCK.replace('"America/New_York"', '"America"')
    refused(write_config(tmp_path, minimal(hr=hr)), section="hr", key="timezone")


def test_unknown_schedule_time_zone(tmp_path):
    path = write_config(tmp_path, minimal('\n[schedule]\ntimezone = "Nowhere/Land"\n'))
    err = refused(path, section="schedule", key="timezone")
    assert "Nowhere/Land" in str(err)


def test_bad_termination_effective(tmp_path):
    hr = HR_BLOCK + 'termination_effective = "midnight"\n'
    err = refused(write_config(tmp_path, minimal(hr=hr)), section="hr",
                  key="termination_effective")
    assert "'midnight'" in str(err)
    assert "end_of_day" in str(err) and "start_of_day" in str(err)


def test_unknown_hr_column_field(tmp_path):
    hr = HR_BLOCK + '[hr.columns]\nemail = "Work Email"\nsalary = "Salary"\n'
    err = refused(write_config(tmp_path, minimal(hr=hr)), section="hr.columns", key="salary")
    assert "unknown HR field" in str(err)
    assert "terminated_on" in str(err)  # lists the known fields


def test_empty_hr_column_mapping(tmp_path):
    hr = HR_BLOCK + '[hr.columns]\nemail = ""\n'
    refused(write_config(tmp_path, minimal(hr=hr)), section="hr.columns", key="email")


def test_unknown_policy_key(tmp_path):
    path = write_config(tmp_path, minimal("\n[policy]\ndeprovision_sla_days = 1\n"))
    err = refused(path, section="policy", key="deprovision_sla_days")
    assert "unknown policy key" in str(err)
    assert "deprovision_sla_hours" in str(err)  # names the known ones


@pytest.mark.parametrize("key, value", [
    ("deprovision_sla_hours", "-1"),
    ("login_grace_minutes", "-0.5"),
    ("deprovision_sla_hours", '"24"'),
    ("inactive_days", "true"),
])
def test_bad_policy_number(tmp_path, key, value):
    path = write_config(tmp_path, minimal(f"\n[policy]\n{key} = {value}\n"))
    err = refused(path, section="policy", key=key)
    assert "must be a number" in str(err)


def test_duplicate_source_name(tmp_path):
    path = write_config(tmp_path, minimal(sources=AWS_BLOCK + AWS_BLOCK))
    err = refused(path, section="sources 'aws-prod'", key="name")
    assert "twice" in str(err)


def test_source_named_hr(tmp_path):
    path = write_config(tmp_path, minimal(sources=AWS_BLOCK.replace('"aws-prod"', '"hr"')))
    err = refused(path, section="sources 'hr'", key="name")
    assert "'hr'" in str(err)


@pytest.mark.parametrize("name_line", ["", 'name = "has space"', 'name = 7', 'name = "-dash"'])
def test_source_without_a_valid_name(tmp_path, name_line):
    sources = AWS_BLOCK + f'\n[[sources]]\n{name_line}\ntype = "aws_iam"\n'
    refused(write_config(tmp_path, minimal(sources=sources)), section="sources #2", key="name")


def test_source_without_type(tmp_path):
    path = write_config(tmp_path, minimal(sources='[[sources]]\nname = "aws-prod"\n'))
    err = refused(path, section="sources 'aws-prod'", key="type")
    assert "required" in str(err)


def test_unknown_top_level_section(tmp_path):
    path = write_config(tmp_path, minimal('\n[reporting]\nformat = "pdf"\n'))
    err = refused(path, section="reporting")
    assert "unknown section" in str(err)
    assert "sources" in str(err)  # names the known sections


def test_sources_must_be_an_array_of_tables(tmp_path):
    path = write_config(tmp_path, HR_BLOCK + '\n[sources]\nname = "x"\n')
    refused(path, section="sources")


def test_invalid_toml(tmp_path):
    path = write_config(tmp_path, minimal('\n[policy\ndeprovision_sla_hours = 24\n'))
    err = refused(path, section=None)
    assert "not valid TOML" in str(err)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.exit_code == 3
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


# --- validate_sources ----------------------------------------------------------------------------


def test_validate_sources_accepts_a_valid_config(tmp_path):
    full_aws = FULL.split("[[sources]]\nname = \"jira\"")[0]
    config = load_config(write_config(tmp_path, full_aws))
    assert [s.name for s in config.sources] == ["aws-prod"]
    validate_sources(config)  # raises on any problem


def test_validate_sources_unknown_integration_type_names_the_installed_ones(tmp_path):
    path = write_config(tmp_path, minimal(sources=AWS_BLOCK + """
        [[sources]]
        name = "okta-main"
        type = "okta"
        """))
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        validate_sources(config)
    message = str(info.value)
    assert info.value.exit_code == 3
    assert "unknown integration type 'okta'" in message
    assert "installed:" in message and "aws_iam" in message and "csv" in message
    assert "accessproof.toml" in message
    assert "[sources 'okta-main']" in message and "key 'type'" in message


def test_validate_sources_unknown_aws_iam_option(tmp_path):
    config = load_config(write_config(tmp_path, minimal(
        sources=AWS_BLOCK + 'regoin = "us-east-2"\n')))
    with pytest.raises(ConfigError) as info:
        validate_sources(config)
    message = str(info.value)
    assert "unknown option for type 'aws_iam'" in message
    assert "accessproof.toml" in message
    assert "[sources 'aws-prod']" in message and "key 'regoin'" in message
    assert "region" in message and "endpoint_url" in message  # the known options


@pytest.mark.parametrize("line, key", [
    ("backfill_days = 365", "backfill_days"),
    ('endpoint_url = "127.0.0.1:5000"', "endpoint_url"),
    ('privileged_groups = "admins"', "privileged_groups"),
])
def test_validate_sources_bad_aws_iam_option_value(tmp_path, line, key):
    config = load_config(write_config(tmp_path, minimal(sources=AWS_BLOCK + line + "\n")))
    with pytest.raises(ConfigError) as info:
        validate_sources(config)
    assert "[sources 'aws-prod']" in str(info.value)
    assert f"key '{key}'" in str(info.value)


def test_validate_sources_csv_is_not_a_source_type(tmp_path):
    config = load_config(write_config(tmp_path, minimal(sources="""
        [[sources]]
        name = "people"
        type = "csv"
        """)))
    with pytest.raises(ConfigError) as info:
        validate_sources(config)
    assert "[sources 'people']" in str(info.value)
    assert "[hr]" in str(info.value)


def test_validate_sources_unknown_hr_type(tmp_path):
    hr = HR_BLOCK.replace('type = "csv"', 'type = "bamboohr"')
    config = load_config(write_config(tmp_path, minimal(hr=hr)))
    with pytest.raises(ConfigError) as info:
        validate_sources(config)
    assert "unknown integration type 'bamboohr'" in str(info.value)
    assert "[hr]" in str(info.value)


def test_validate_sources_hr_type_must_provide_people(tmp_path):
    hr = HR_BLOCK.replace('type = "csv"', 'type = "aws_iam"')
    config = load_config(write_config(tmp_path, minimal(hr=hr)))
    with pytest.raises(ConfigError) as info:
        validate_sources(config)
    assert "[hr]" in str(info.value) and "key 'type'" in str(info.value)


def test_validate_sources_hr_option_error_names_section_and_key(tmp_path):
    config = load_config(write_config(tmp_path, minimal(hr=HR_BLOCK + 'delimiter = ";;"\n')))
    with pytest.raises(ConfigError) as info:
        validate_sources(config)
    assert "[hr]" in str(info.value) and "key 'delimiter'" in str(info.value)
    assert info.value.exit_code == 3


def test_validate_sources_hr_option_error_names_the_file(tmp_path):
    config = load_config(write_config(tmp_path, minimal(hr=HR_BLOCK + 'quoting = "all"\n')))
    with pytest.raises(ConfigError) as info:
        validate_sources(config)
    assert "key 'quoting'" in str(info.value)
    assert "accessproof.toml" in str(info.value)


# --- the error hierarchy -------------------------------------------------------------------------


def test_config_error_message_format():
    err = ConfigError("must be a table", file="a/b.toml", section="sources 'x'", key="fields")
    assert str(err) == "a/b.toml [sources 'x'] key 'fields': must be a table"
    assert (err.file, err.section, err.key) == ("a/b.toml", "sources 'x'", "fields")
    assert str(ConfigError("plain")) == "plain"
    assert str(ConfigError("m", section="hr")) == "[hr]: m"


def test_input_and_source_error_messages():
    err = InputError("bad date", file="hr.csv", row=7, column="Hire Date")
    assert str(err) == "hr.csv, line 7, column 'Hire Date': bad date"
    assert (err.row, err.column, err.exit_code) == (7, "Hire Date", 3)
    src = SourceError("aws-prod", "AccessDenied")
    assert str(src) == "source 'aws-prod': AccessDenied"
    assert src.source == "aws-prod" and src.exit_code == 2
    assert isinstance(src, AccessproofError)


# --- the CLI maps configuration errors to exit status 3 ------------------------------------------


@pytest.fixture
def bad_config(tmp_path) -> Path:
    return write_config(tmp_path, minimal(sources=AWS_BLOCK.replace(
        'region = "us-east-1"', 'region = "us-east-1"\nclient_secret = "abc"')), name="bad.toml")


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # older click: stderr mixed into output
        return result.output


@pytest.mark.parametrize("args", [
    ["pack", "--period", "2026-Q1"],
    ["collect"],
    ["run"],
])
def test_cli_bad_config_exits_3_naming_the_file(bad_config, args):
    result = CliRunner().invoke(cli, [args[0], "--config", str(bad_config), *args[1:]])
    assert result.exit_code == 3, (result.output, result.exception)
    err = _stderr(result)
    assert "bad.toml" in err
    assert "client_secret" in err and "[sources 'aws-prod']" in err
    assert "'abc'" not in result.output and '"abc"' not in result.output


def test_cli_missing_config_exits_3(tmp_path):
    missing = tmp_path / "missing.toml"
    result = CliRunner().invoke(cli, ["collect", "--config", str(missing)])
    assert result.exit_code == 3, (result.output, result.exception)
    assert "missing.toml" in _stderr(result)


@pytest.mark.parametrize("label", ["2026-Q5", "2026-13", "Q1-2026"])
def test_cli_bad_period_exits_3(tmp_path, label):
    good = write_config(tmp_path, minimal())
    result = CliRunner().invoke(cli, ["pack", "--config", str(good), "--period", label])
    assert result.exit_code == 3, (result.output, result.exception)
    assert label in _stderr(result)
    assert not (tmp_path / "conf" / "evidence" / "packs").exists()

