"""Integration registry (entry points, DESIGN §7) and the public surface (DESIGN §4, §6).

Every registered integration must declare what it provides and the exact permissions it needs —
checked over the installed entry points, so a new integration is covered without a new test.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points

import click
import pytest
from click.testing import CliRunner

from collector import errors
from collector.cli import cli
from collector.controls import CONTROLS
from collector.errors import (AccessproofError, ConfigError, InputError, IntegrityError,
                              SourceError)
from collector.integration import Integration, Permission
from collector.registry import GROUP, available, get_integration
from collector.schema import SCHEMAS

AWS_PERMISSION = re.compile(r"^[a-z0-9-]+:[A-Za-z]+$")
ENTRY_POINTS = sorted(ep.name for ep in entry_points(group="accessproof.integrations"))


def test_group_name():
    assert GROUP == "accessproof.integrations"


def test_available_lists_every_entry_point_and_the_builtins():
    assert available() == ENTRY_POINTS
    assert {"csv", "aws_iam"} <= set(available())


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_integration_declarations(name):
    cls = get_integration(name)
    assert isinstance(cls, type) and issubclass(cls, Integration)
    assert cls is not Integration
    assert cls.type == name
    assert isinstance(cls.title, str) and cls.title.strip()

    assert isinstance(cls.tables, tuple) and cls.tables
    assert set(cls.tables) <= set(SCHEMAS), f"{name}: unknown tables {set(cls.tables) - set(SCHEMAS)}"

    assert isinstance(cls.permissions, tuple) and cls.permissions, f"{name}: no permissions"
    for perm in cls.permissions:
        assert isinstance(perm, Permission)
        for attr in ("system", "name", "why"):
            value = getattr(perm, attr)
            assert isinstance(value, str) and value.strip(), f"{name}: empty {attr} in {perm}"
        if perm.system == "aws-iam-policy":
            assert AWS_PERMISSION.match(perm.name), f"{name}: bad IAM action {perm.name!r}"
    names = [(p.system, p.name) for p in cls.permissions]
    assert len(names) == len(set(names)), f"{name}: a permission is declared twice"

    assert isinstance(cls.options, dict)
    for key, description in cls.options.items():
        assert isinstance(key, str) and key
        assert isinstance(description, str) and description.strip(), f"{name}: option {key}"
    for key in cls.required_options:
        assert key in cls.options, f"{name}: required option {key} is not declared"
    if cls.log_retention_days is not None:
        assert isinstance(cls.log_retention_days, int) and cls.log_retention_days > 0


def test_builtin_declarations():
    from integrations.aws_iam import AwsIam
    from integrations.hr_csv import CsvHR
    assert get_integration("csv") is CsvHR
    assert get_integration("aws_iam") is AwsIam
    assert CsvHR.tables == ("people",)
    assert set(AwsIam.tables) == {"accounts", "events"}
    assert AwsIam.log_retention_days == 90        # CloudTrail LookupEvents (DESIGN §1)
    assert "endpoint_url" in AwsIam.options       # the endpoint override of DESIGN §7
    assert {p.name for p in AwsIam.permissions} >= {
        "iam:GenerateCredentialReport", "iam:GetCredentialReport",
        "iam:GetAccountAuthorizationDetails", "cloudtrail:LookupEvents"}
    assert all(p.system == "aws-iam-policy" for p in AwsIam.permissions)


def test_unknown_integration_type():
    with pytest.raises(ConfigError) as info:
        get_integration("okta", file="c.toml", section="sources 'okta'")
    message = str(info.value)
    assert message.startswith("c.toml [sources 'okta'] key 'type'")
    assert "unknown integration type 'okta'" in message
    for name in ENTRY_POINTS:
        assert name in message


# --- the public surface --------------------------------------------------------------------------


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", ())
            if opt.startswith("--")}


def test_cli_commands():
    assert {"collect", "pack", "run", "verify", "permissions", "demo", "serve", "status",
            "check"} <= set(cli.commands)


@pytest.mark.parametrize("command, options", [
    ("collect", {"--config", "--source"}),
    ("pack", {"--config", "--period"}),
    ("run", {"--config"}),
    ("verify", {"--require-chain"}),
    ("permissions", {"--source"}),
    ("demo", {"--out"}),
])
def test_cli_key_options(command, options):
    assert options <= _options(cli.commands[command]), _options(cli.commands[command])


def test_cli_required_options_and_arguments():
    def param(command, name):
        return next(p for p in cli.commands[command].params if p.name == name)
    assert param("collect", "config_path").required
    assert param("pack", "config_path").required
    assert param("pack", "period").required
    assert param("run", "config_path").required
    assert param("collect", "sources").multiple           # --source is repeatable
    verify_args = [p for p in cli.commands["verify"].params if isinstance(p, click.Argument)]
    assert [p.name for p in verify_args] == ["pack_dir"]
    assert param("verify", "require_chain").is_flag


def test_control_ids_are_public():
    assert list(CONTROLS) == ["provisioning-approved", "deprovisioning-timely",
                              "no-access-after-termination", "orphaned-accounts",
                              "role-change-approved"]


@pytest.mark.parametrize("cls, code", [
    (ConfigError, 3), (InputError, 3), (SourceError, 2), (IntegrityError, 1),
    (AccessproofError, 1),
])
def test_exception_hierarchy(cls, code):
    assert issubclass(cls, AccessproofError)
    assert issubclass(cls, Exception)
    assert cls.exit_code == code


def test_exception_classes_are_distinct():
    assert not issubclass(ConfigError, InputError) and not issubclass(InputError, ConfigError)
    assert not issubclass(SourceError, ConfigError)
    # every error class the module defines belongs to the hierarchy
    defined = [obj for obj in vars(errors).values()
               if isinstance(obj, type) and issubclass(obj, Exception)
               and obj.__module__ == errors.__name__]
    assert all(issubclass(obj, AccessproofError) for obj in defined)


# --- accessproof permissions ---------------------------------------------------------------------


def test_permissions_command_prints_every_declared_aws_permission():
    from integrations.aws_iam import AwsIam
    result = CliRunner().invoke(cli, ["permissions"])
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.stdout
    assert "# aws_iam: AWS IAM" in out
    for perm in AwsIam.permissions:
        assert perm.name in out
    lines = out.splitlines()
    # each permission on its own line, with its system
    for perm in AwsIam.permissions:
        assert any(perm.name in line and "aws-iam-policy" in line for line in lines)
    for name in ENTRY_POINTS:
        assert f"# {name}: {get_integration(name).title}" in out


def test_permissions_command_for_one_type():
    from integrations.aws_iam import AwsIam
    result = CliRunner().invoke(cli, ["permissions", "--source", "aws_iam"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "# aws_iam: AWS IAM" in result.stdout
    assert "# csv" not in result.stdout
    declared = [line for line in result.stdout.splitlines()
                if line.startswith("aws-iam-policy")]
    assert len(declared) == len(AwsIam.permissions)


def test_permissions_command_unknown_type_exits_3():
    result = CliRunner().invoke(cli, ["permissions", "--source", "okta"])
    assert result.exit_code == 3, (result.output, result.exception)
    assert "okta" in result.stderr
