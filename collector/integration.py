"""What an integration is: the interface every source plugin implements (DESIGN §7).

An integration turns API pages into canonical tables and records every raw page; it never judges
(no control logic here). It declares the tables it provides, the exact permissions it needs, the
config options it accepts and how far back its source keeps audit events.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd

from .config import HRConfig, SourceConfig
from .errors import ConfigError
from .store import RawRecorder


@dataclass(frozen=True)
class Permission:
    """One grant the integration needs: ``system`` says where it is granted."""

    system: str        # "aws-iam-policy", "google-oauth-scope", "graph-application", "filesystem"
    name: str          # e.g. "iam:GetCredentialReport"
    why: str


@dataclass
class CollectContext:
    name: str                       # configured source name ("aws-prod", "hr")
    config: SourceConfig | HRConfig
    now: dt.datetime                # collection time, tz-aware UTC
    events_since: dt.datetime       # pull audit events from here (overlap included) ...
    events_until: dt.datetime       # ... to here
    raw: RawRecorder
    log: logging.Logger
    first_collection: bool = False


@dataclass
class CollectResult:
    tables: dict[str, pd.DataFrame]
    principal: str | None = None
    instances: list[str] = field(default_factory=list)
    limitations: list[str] = field(default_factory=list)
    degraded: bool = False
    # False when the source returned no sign-in data at all (e.g. Entra without a P1 licence):
    # no-access-after-termination is then not complete for this source
    sign_in_data: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Integration:
    type: ClassVar[str]
    title: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]
    permissions: ClassVar[tuple[Permission, ...]]
    # Days the source keeps audit events; None when it has no event history.
    log_retention_days: ClassVar[int | None] = None
    # For sources that keep their records for ever (tickets): how far back the first collection
    # reads; later ones read from the previous good collection on (with overlap).
    default_backfill_days: ClassVar[int | None] = None
    # Option name → short description; anything else in the config section is an error.
    options: ClassVar[dict[str, str]] = {}
    required_options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def validate(cls, source: SourceConfig) -> None:
        for key in cls.required_options:
            source.require(key)
        for key in source.options:
            if key not in cls.options:
                raise ConfigError(f"unknown option for type '{cls.type}' (known: "
                                  f"{', '.join(sorted(cls.options)) or 'none'})",
                                  file=source.file, section=source.section, key=key)

    def collect(self, ctx: CollectContext) -> CollectResult:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self, ctx: CollectContext) -> list[str]:
        """`accessproof check`: authenticate and make one cheap read call per permission group.

        Returns the problems found (each naming the missing permission), [] when all is well;
        records nothing. Integrations override it; the default says it cannot check."""
        return [f"type '{self.type}' has no access check; run `accessproof collect` instead"]
