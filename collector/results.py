"""What the pipeline hands to the report writers: judged results, nothing left to compute.

Reports render these objects; they never compute a control result themselves (DESIGN §2).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from .periods import Period

RESULTS_SCHEMA_VERSION = 1


@dataclass
class Finding:
    """One exception of one control (a row of ``exceptions.csv``)."""

    control: str
    reason: str
    source: str                       # configured source name, or "hr"
    account: str | None               # the source's login (IAM user name, ...)
    email: str | None                 # linked person's primary email, else the account's
    person_id: str | None
    detail: str
    display_name: str | None = None   # attacker-controlled text: escaped by every writer
    evidence: str | None = None       # "audit event", "snapshot bound", "credential report" ...
    terminated_at: pd.Timestamp | None = None
    disabled_at: pd.Timestamp | None = None
    hours_over_sla: float | None = None
    ticket: str | None = None         # the ticket judged (key), for ticket findings
    ticket_url: str | None = None

    def public(self) -> dict[str, Any]:
        """The fields results.json promises (DESIGN §9)."""
        return {k: getattr(self, k) for k in
                ("control", "reason", "source", "account", "email", "person_id", "detail")}


@dataclass
class ControlResult:
    id: str
    title: str
    description: str
    complete: bool
    limitations: list[str]
    population: pd.DataFrame          # the full population, one row per item judged
    exceptions: list[Finding]
    excluded: pd.DataFrame | None = None   # e.g. allowlisted service accounts, listed not judged
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.exceptions:
            return "fail"
        return "pass" if self.complete else "not_evaluable"

    @property
    def population_size(self) -> int:
        return len(self.population)


@dataclass
class SnapshotRef:
    source: str
    path: str                         # relative to the store root
    manifest_sha256: str
    started_at: pd.Timestamp
    finished_at: pd.Timestamp
    status: str


@dataclass
class SourceReport:
    name: str
    type: str
    status: str                       # ok | degraded | failed | missing
    error: str | None
    limitations: list[str]
    coverage_start: pd.Timestamp | None
    coverage_end: pd.Timestamp | None
    records: dict[str, int]
    snapshots: list[SnapshotRef]
    gaps: list[dict[str, Any]]        # {"start", "end", "days", "unrecoverable"}
    ipe: dict[str, Any]               # the latest good snapshot's manifest facts (IPE)
    log_retention_days: int | None = None


@dataclass
class Evidence:
    period: Period
    generated_at: dt.datetime
    judged_until: pd.Timestamp
    tool_version: str
    sources: list[SourceReport]
    controls: list[ControlResult]
    policy: dict[str, Any]
    config_digest: dict[str, Any]
    hr_timezone: str
    # name → frame for populations/<name>.csv beside the per-control populations
    extra_populations: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def in_progress(self) -> bool:
        return self.judged_until < self.period.end

    @property
    def status(self) -> str:
        return "complete" if all(c.complete for c in self.controls) else "incomplete"

    @property
    def exceptions(self) -> list[Finding]:
        return [f for c in self.controls for f in c.exceptions]

    @property
    def any_source_failed(self) -> bool:
        return any(s.status in ("failed", "missing") for s in self.sources)

    def exit_code(self) -> int:
        if self.any_source_failed:
            return 2
        return 1 if self.exceptions else 0


def finding_dict(f: Finding) -> dict[str, Any]:
    return asdict(f)
