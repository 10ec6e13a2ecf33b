"""`provisioning-approved`: every human account created in the period has an access request,
for the same person and system, approved before the account was created (DESIGN §4).

Creation time: an audit event, else the account's own creation timestamp (when consistent with
the snapshots), else the bound between the snapshot before and the one where it first appears.
Accounts that pre-date the period are not in the population; service accounts are excluded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..identity import LINKED
from ..results import ControlResult, Finding
from ..schema import normalize_email
from ..timeline import UNKNOWN
from . import approvals
from .base import source_limitations
from .inputs import ControlInputs

ID = "provisioning-approved"
TITLE = "Accounts created only after an approved access request"
DESCRIPTION = ("Every human account created in the period, in every account source, is backed "
               "by an access-request ticket for the same person and target system, approved — "
               "by someone other than the person — before the account was created (plus the "
               "configured grace). Creation times come from audit events, else the account's "
               "own timestamp, else the snapshots around its first appearance.")
KINDS = ("access_request",)


def _created_in_period(tl, start: pd.Timestamp, end: pd.Timestamp) -> list[int]:
    """Rows whose creation may fall in [start, end)."""
    rows = set()
    first_seen = tl.accounts["first_seen"].to_numpy()
    for j in range(1, len(tl.snapshots)):
        if tl.snap_finish[j] >= start and tl.snap_start[j - 1] < end:
            rows.update(np.flatnonzero(first_seen == j).tolist())
    created = tl.accounts["created_at"]
    rows.update(np.flatnonzero((created >= start).fillna(False).to_numpy()
                               & (created < end).fillna(False).to_numpy()).tolist())
    ev = tl.events[(tl.events["action"] == "created") & (tl.events["at"] >= start)
                   & (tl.events["at"] < end) & (tl.events["row"] >= 0)]
    rows.update(ev["row"].astype(int).tolist())
    return sorted(rows)


def coverage_limitations(inputs: ControlInputs) -> list[str]:
    """An account created and removed in an uncovered stretch cannot be seen."""
    out = []
    start, until = inputs.period.start, inputs.judged_until
    for src in inputs.account_sources:
        tl = inputs.timelines.get(src.name)
        if tl is None:
            continue
        begins = tl.coverage_start
        if begins is None or begins > start:
            out.append(f"'{src.name}': evidence begins {begins:%Y-%m-%d %H:%M} UTC, after the "
                       "period start" if begins is not None else f"'{src.name}': no evidence")
            continue
        end = min(until, tl.events_until) if tl.events_until is not None else None
        if tl.events_until is None or not tl.events_cover(start, end):
            out.append(f"'{src.name}': the stored audit events do not span the period")
    return out


def evaluate(inputs: ControlInputs) -> ControlResult:
    start, until = inputs.period.start, inputs.judged_until
    grace = pd.Timedelta(minutes=inputs.policy.approval_grace_minutes)
    indexed = approvals.index_tickets(inputs.tickets, inputs.identity)
    rows_out, excluded, findings = [], [], []
    for src in inputs.account_sources:
        tl = inputs.timelines.get(src.name)
        if tl is None:
            continue
        links = inputs.links[src.name]
        for row in _created_in_period(tl, start, until):
            created = tl.creation(row)
            if created.upper is not None and created.upper < start:
                continue                     # pre-dates the period
            if created.lower is not None and created.lower >= until:
                continue
            if created.basis == UNKNOWN or created.upper is None:
                continue
            acc = tl.accounts.iloc[row]
            base = {"source": src.name, "account": acc["login"], "email": acc["email"],
                    "display_name": acc["display_name"], "kind": acc["kind"],
                    "created": created.describe(), "created_lower": created.lower,
                    "created_upper": created.upper, "basis": created.basis}
            if acc["kind"] == "service" or any(e.matches(src.name, src.type, acc["login"])
                                               and e.active_on(created.upper.date())
                                               for e in inputs.allowlist):
                excluded.append({**base, "why": "service account"})
                continue
            link = links.iloc[row]
            person = link["person"] if link["link"] == LINKED else normalize_email(acc["email"])
            tickets = approvals.candidates(indexed, person, KINDS, (src.name, src.type))
            lower = created.lower if created.lower is not None else None
            verdict = approvals.judge(tickets, lower, created.upper, grace, "creation")
            rows_out.append({**base, "person": person, "ticket": verdict.ticket,
                             "ticket_url": verdict.url, "result": verdict.reason or "approved",
                             "detail": verdict.detail})
            if verdict.reason:
                findings.append(Finding(
                    control=ID, reason=verdict.reason, source=src.name, account=acc["login"],
                    email=person or acc["email"],
                    person_id=inputs.identity.person_ids.get(person) if person else None,
                    detail=verdict.detail, display_name=acc["display_name"],
                    evidence=created.basis, ticket=verdict.ticket, ticket_url=verdict.url))
    limitations = source_limitations(inputs) + ticket_source_limitations(inputs) \
        + coverage_limitations(inputs)
    population = pd.DataFrame(rows_out, columns=[
        "source", "account", "email", "display_name", "kind", "created", "created_lower",
        "created_upper", "basis", "person", "ticket", "ticket_url", "result", "detail"])
    return ControlResult(id=ID, title=TITLE, description=DESCRIPTION, complete=not limitations,
                         limitations=limitations, population=population, exceptions=findings,
                         excluded=pd.DataFrame(excluded) if excluded else None)


def ticket_source_limitations(inputs: ControlInputs) -> list[str]:
    if not inputs.ticket_sources:
        return ["no ticketing source is configured: approvals cannot be checked"]
    out = []
    for src in inputs.ticket_sources:
        if not src.has_snapshot:
            out.append(f"ticketing source '{src.name}' has no good snapshot")
        elif not src.ok:
            out.append(f"the latest collection of ticketing source '{src.name}' failed")
    return out

