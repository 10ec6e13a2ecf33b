"""Configuration: TOML in, validated dataclasses out (DESIGN §8).

Secrets never stand in the file: a secret-bearing key holds ``env:NAME`` or ``file:PATH`` and is
resolved only when an integration asks for it. Every error names file, section and key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

SECRET_KEY_PATTERN = re.compile(
    r"(secret|password|passphrase|(?:^|_)token|api_key|private_key|signing_key|credential|"
    r"client_certificate|certificate_key|service_account_file|access_key)$"
)
SOURCE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HR_REQUIRED_COLUMNS = ("person_id", "email", "hired_on", "terminated_on")
HR_OPTIONAL_COLUMNS = ("name", "aliases", "department", "title", "manager_email", "worker_type",
                       "status")


class Secret:
    """A reference to a secret (``env:NAME`` / ``file:PATH``); the value is read on demand only."""

    def __init__(self, reference: str, base_dir: Path):
        self.reference = reference
        self._base_dir = base_dir

    @property
    def kind(self) -> str:
        return self.reference.split(":", 1)[0]

    @property
    def path(self) -> Path | None:
        if self.kind != "file":
            return None
        path = Path(os.path.expanduser(self.reference[5:]))
        return path if path.is_absolute() else self._base_dir / path

    def reveal(self) -> str:
        if self.kind == "env":
            name = self.reference[4:]
            value = os.environ.get(name)
            if value is None:
                raise ConfigError(f"environment variable {name} is not set")
            return value
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {self.path}: {exc.strerror}") from None

    def __repr__(self) -> str:  # never the value
        return f"Secret({self.reference!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class PolicyConfig:
    deprovision_sla_hours: float = 24.0
    login_grace_minutes: float = 0.0
    approval_grace_minutes: float = 0.0
    inactive_days: int = 90


@dataclass(frozen=True)
class HRConfig:
    type: str
    path: Path
    date_format: str
    timezone: str
    termination_effective: str
    columns: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    name: str = "hr"
    file: str | None = None           # the configuration file, for error messages

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class SourceConfig:
    name: str
    type: str
    options: dict[str, Any]
    section: str
    file: str

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.options:
            raise ConfigError("is required", file=self.file, section=self.section, key=key)
        return self.options[key]

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, section=self.section, key=key)


@dataclass(frozen=True)
class ScheduleConfig:
    timezone: str = "UTC"
    collect: str = "0 2 * * *"
    pack: str = "0 6 1 1,4,7,10 *"
    database_url: Any = None      # job store; default: SQLite in the store (may be a Secret)


@dataclass(frozen=True)
class Config:
    file: Path
    store_path: Path
    policy: PolicyConfig
    hr: HRConfig
    sources: tuple[SourceConfig, ...]
    service_accounts_path: Path | None
    schedule: ScheduleConfig
    raw: dict[str, Any]
    # validated by their owners (reports, notifications); secrets already turned into Secret
    pack: dict[str, Any] = field(default_factory=dict)
    notifications: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.file.parent

    def source(self, name: str) -> SourceConfig:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"no source named '{name}' (configured: {known})", file=str(self.file),
                          section="sources")

    def digest(self) -> dict[str, Any]:
        """The configuration as recorded in a pack: secret references kept, values never read."""
        text = json.dumps(self.raw, sort_keys=True, default=str)
        return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "config": self.raw}


def _table(data: dict, key: str, file: str, section: str | None = None) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError("must be a table", file=file, section=section or key)
    return value


def _only(section: dict, known: tuple[str, ...], file: str, name: str) -> None:
    for key in section:
        if key not in known:
            raise ConfigError(f"unknown key (known: {', '.join(known)})", file=file, section=name,
                              key=key)


def _number(section: dict, key: str, default: float, file: str, name: str, *, minimum=0) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"must be a number ≥ {minimum}, got {value!r}", file=file, section=name,
                          key=key)
    return value


def _check_secrets(values: dict, file: str, section: str, base_dir: Path,
                   extra_secret_keys: frozenset[str] = frozenset()) -> dict:
    """Replace secret references by ``Secret`` objects; refuse literal secrets."""
    out = {}
    for key, value in values.items():
        is_secret = bool(SECRET_KEY_PATTERN.search(key)) or key in extra_secret_keys
        if isinstance(value, str) and value.startswith(("env:", "file:")):
            if len(value.split(":", 1)[1]) == 0:
                raise ConfigError("empty secret reference", file=file, section=section, key=key)
            out[key] = Secret(value, base_dir)
        elif is_secret and value not in (None, ""):
            raise ConfigError(
                "looks like a literal secret; write 'env:NAME' or 'file:PATH' instead "
                "(secrets are never stored in the configuration file)",
                file=file, section=section, key=key)
        elif isinstance(value, dict):
            out[key] = _check_secrets(value, file, f"{section}.{key}", base_dir, extra_secret_keys)
        else:
            out[key] = value
    return out


def _check_timezone(name: Any, file: str, section: str, key: str) -> str:
    try:
        ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory
        raise ConfigError(f"unknown time zone {name!r} (use an IANA name such as "
                          "'America/New_York' or 'UTC')", file=file, section=section,
                          key=key) from None
    return str(name)


def _load_hr(data: dict, file: str, base_dir: Path) -> HRConfig:
    if "hr" not in data:
        raise ConfigError("section is required", file=file, section="hr")
    hr = _table(data, "hr", file)
    for key in ("type", "path", "date_format", "timezone"):
        if key not in hr:
            raise ConfigError("is required" + (" (HR dates are never guessed)"
                                               if key == "date_format" else ""),
                              file=file, section="hr", key=key)
    effective = hr.get("termination_effective", "end_of_day")
    if effective not in ("end_of_day", "start_of_day"):
        raise ConfigError(f"must be 'end_of_day' or 'start_of_day', got {effective!r}", file=file,
                          section="hr", key="termination_effective")
    columns = _table(hr, "columns", file, "hr.columns")
    known = set(HR_REQUIRED_COLUMNS) | set(HR_OPTIONAL_COLUMNS)
    for key, value in columns.items():
        if key not in known:
            raise ConfigError(f"unknown HR field (known: {', '.join(sorted(known))})", file=file,
                              section="hr.columns", key=key)
        if not isinstance(value, str) or not value:
            raise ConfigError("must name a column of the export", file=file,
                              section="hr.columns", key=key)
    try:
        import datetime as _dt
        _dt.datetime(2026, 1, 31).strftime(str(hr["date_format"]))
    except ValueError:
        raise ConfigError(f"invalid date format {hr['date_format']!r}", file=file, section="hr",
                          key="date_format") from None
    path = Path(os.path.expanduser(str(hr["path"])))
    options = {k: v for k, v in hr.items()
               if k not in ("type", "path", "date_format", "timezone", "termination_effective",
                            "columns")}
    return HRConfig(
        type=str(hr["type"]), path=path if path.is_absolute() else base_dir / path,
        date_format=str(hr["date_format"]),
        timezone=_check_timezone(hr["timezone"], file, "hr", "timezone"),
        termination_effective=effective, columns=dict(columns),
        options=_check_secrets(options, file, "hr", base_dir), file=file)


def _load_sources(data: dict, file: str, base_dir: Path) -> tuple[SourceConfig, ...]:
    raw_sources = data.get("sources", [])
    if not isinstance(raw_sources, list):
        raise ConfigError("must be an array of tables ([[sources]])", file=file, section="sources")
    sources, seen = [], set()
    for index, raw in enumerate(raw_sources):
        section = f"sources #{index + 1}"
        if not isinstance(raw, dict):
            raise ConfigError("must be a table", file=file, section=section)
        name = raw.get("name")
        if not isinstance(name, str) or not SOURCE_NAME_PATTERN.match(name):
            raise ConfigError("is required: letters, digits, '.', '_' or '-', at most 64",
                              file=file, section=section, key="name")
        section = f"sources '{name}'"
        if name in seen or name == "hr":
            raise ConfigError("is used twice (source names must be unique and not 'hr')",
                              file=file, section=section, key="name")
        seen.add(name)
        if not isinstance(raw.get("type"), str):
            raise ConfigError("is required", file=file, section=section, key="type")
        options = {k: v for k, v in raw.items() if k not in ("name", "type")}
        sources.append(SourceConfig(name=name, type=raw["type"], section=section, file=file,
                                    options=_check_secrets(options, file, section, base_dir)))
    return tuple(sources)


def load_config(path: str | os.PathLike) -> Config:
    """Load and validate a configuration file; raises ``ConfigError`` naming what is wrong."""
    file_path = Path(path).resolve()
    file = str(path)
    try:
        with open(file_path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file) from None
    base_dir = file_path.parent

    known_sections = {"store", "policy", "hr", "service_accounts", "sources", "schedule", "pack",
                      "notifications"}
    for key in data:
        if key not in known_sections:
            raise ConfigError(f"unknown section (known: {', '.join(sorted(known_sections))})",
                              file=file, section=key)

    store = _check_secrets(_table(data, "store", file), file, "store", base_dir)
    _only(store, ("path",), file, "store")
    store_path = Path(os.path.expanduser(str(store.get("path", "./evidence"))))
    if not store_path.is_absolute():
        store_path = base_dir / store_path

    raw_policy = _table(data, "policy", file)
    defaults = PolicyConfig()
    for key in raw_policy:
        if key not in PolicyConfig.__dataclass_fields__:
            raise ConfigError(
                f"unknown policy key (known: {', '.join(PolicyConfig.__dataclass_fields__)})",
                file=file, section="policy", key=key)
    policy = PolicyConfig(**{
        key: _number(raw_policy, key, getattr(defaults, key), file, "policy")
        for key in PolicyConfig.__dataclass_fields__})

    allow = _table(data, "service_accounts", file)
    allow_path = None
    if "path" in allow:
        allow_path = Path(os.path.expanduser(str(allow["path"])))
        if not allow_path.is_absolute():
            allow_path = base_dir / allow_path

    raw_schedule = _check_secrets(_table(data, "schedule", file), file, "schedule", base_dir)
    _only(raw_schedule, ("timezone", "collect", "pack", "database_url"), file, "schedule")
    schedule = ScheduleConfig(
        timezone=_check_timezone(raw_schedule.get("timezone", "UTC"), file, "schedule",
                                 "timezone"),
        collect=str(raw_schedule.get("collect", ScheduleConfig.collect)),
        pack=str(raw_schedule.get("pack", ScheduleConfig.pack)),
        database_url=raw_schedule.get("database_url"))

    config = Config(
        file=file_path, store_path=store_path, policy=policy,
        hr=_load_hr(data, file, base_dir), sources=_load_sources(data, file, base_dir),
        service_accounts_path=allow_path, schedule=schedule, raw=data,
        pack=_check_secrets(_table(data, "pack", file), file, "pack", base_dir),
        notifications=_check_secrets(_table(data, "notifications", file), file,
                                     "notifications", base_dir))
    return config


def validate_sources(config: Config) -> None:
    """Check every source's type against the registry and its own option schema."""
    from .registry import get_integration

    hr = get_integration(config.hr.type, file=str(config.file), section="hr")
    if "people" not in hr.tables:
        raise ConfigError(f"integration '{config.hr.type}' does not provide HR records (the "
                          "people table)", file=str(config.file), section="hr", key="type")
    hr.validate(config.hr)
    for source in config.sources:
        integration = get_integration(source.type, file=source.file, section=source.section)
        integration.validate(source)
