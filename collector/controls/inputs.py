"""Everything a control may look at, already loaded: controls make no calls and read no files."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from ..allowlist import AllowlistEntry
from ..config import PolicyConfig
from ..identity import IdentityIndex
from ..periods import Period
from ..schema import empty
from ..timeline import SourceTimeline


@dataclass
class SourceState:
    name: str
    type: str
    ok: bool                  # the latest collection succeeded (ok or degraded)
    has_snapshot: bool
    limitations: list[str] = field(default_factory=list)
    sign_in_data: bool = True     # the latest good snapshot carried sign-in data


@dataclass
class ControlInputs:
    period: Period
    now: pd.Timestamp                     # when the pack is judged
    policy: PolicyConfig
    hr_timezone: str
    people: pd.DataFrame                  # canonical people (all employments)
    hr: SourceState
    account_sources: list[SourceState]
    timelines: dict[str, SourceTimeline]  # account source name → timeline
    allowlist: list[AllowlistEntry] = field(default_factory=list)
    tickets: pd.DataFrame = field(default_factory=lambda: empty("tickets"))
    ticket_sources: list[SourceState] = field(default_factory=list)
    hr_changes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["person", "person_id", "field", "old", "new", "lower", "upper"]))
    hr_first_snapshot: pd.Timestamp | None = None

    @property
    def judged_until(self) -> pd.Timestamp:
        return self.period.judged_until(self.now)

    @cached_property
    def identity(self) -> IdentityIndex:
        return IdentityIndex.from_people(self.people)

    @cached_property
    def links(self) -> dict[str, pd.DataFrame]:
        """Per account source: each timeline row's linked person (primary email) and status."""
        out = {}
        for name, tl in self.timelines.items():
            out[name] = self.identity.link(tl.accounts["email"], tl.accounts.get("employee_id"),
                                           tl.accounts.get("aliases"))
        return out

    def failed_sources(self, *, hr: bool = True) -> list[str]:
        needed = ([self.hr] if hr else []) + self.account_sources
        return [s.name for s in needed if not s.ok]

    def sla(self) -> pd.Timedelta:
        return pd.Timedelta(hours=self.policy.deprovision_sla_hours)

    def today(self) -> dt.date:
        return self.judged_until.date()

    @cached_property
    def termination_items(self) -> pd.DataFrame:
        from .terminations import build_termination_items
        return build_termination_items(self)
