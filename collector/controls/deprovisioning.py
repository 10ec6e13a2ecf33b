"""`deprovisioning-timely`: each leaver's accounts are disabled within the SLA (DESIGN §4, §9).

A disable time from an audit event is exact; otherwise it is bounded by snapshots and judged by
its upper bound: upper bound within the SLA → on time; lower bound past the SLA →
``disabled_late``; otherwise ``disable_time_unknown``. Still enabled → ``still_enabled``.
"""

from __future__ import annotations

import pandas as pd

from ..results import ControlResult, Finding
from ..timeline import UNKNOWN
from . import approvals
from .base import source_limitations
from .inputs import ControlInputs

ID = "deprovisioning-timely"
TITLE = "Leavers' accounts disabled within the SLA"
DESCRIPTION = ("For every termination effective in the period and every account linked to the "
               "person, the account is disabled no later than the SLA after the termination "
               "takes effect. Disable times come from audit events when available, otherwise "
               "from the snapshots that bound the change (judged by the later bound).")

ON_TIME, PENDING = "on_time", "within_sla_pending"


def _hours(delta: pd.Timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)


def judge(inputs: ControlInputs, item) -> dict:
    """The verdict on one (termination × account) item, with the evidence it rests on."""
    tl = inputs.timelines[item.source]
    term = item.termination_effective
    due = term + inputs.sla()
    cutoff = item.rehired_at if pd.notna(item.rehired_at) else None
    found = tl.disable_after(int(item.row), term, cutoff)
    when = found.when
    out = {"disabled_lower": when.lower, "disabled_upper": when.upper, "basis": when.basis,
           "disabled": when.describe(), "hours_to_disable": None, "hours_over_sla": None}
    if found.still_enabled:
        seen = found.last_enabled_seen
        if seen >= due:
            out.update(result="still_enabled", basis="snapshot",
                       hours_over_sla=_hours(inputs.judged_until - due),
                       detail=f"enabled in the snapshot of {seen:%Y-%m-%d %H:%M} UTC, after the "
                              f"deadline {due:%Y-%m-%d %H:%M} UTC")
        elif inputs.now < due:
            out.update(result=PENDING, detail="still enabled, SLA not yet elapsed")
        else:
            out.update(result="disable_time_unknown", basis=UNKNOWN,
                       detail=f"enabled when last collected ({seen:%Y-%m-%d %H:%M} UTC), "
                              f"before the deadline {due:%Y-%m-%d %H:%M} UTC; no later snapshot")
        return out
    if not when.known:
        out.update(result="disable_time_unknown",
                   detail="no snapshot or audit event shows when the account was disabled")
        return out
    if when.exact or (when.lower is not None and when.lower == when.upper):
        out["hours_to_disable"] = _hours(when.upper - term)
        if when.upper <= due:
            out.update(result=ON_TIME, detail=f"disabled {when.describe()}")
        else:
            out.update(result="disabled_late", hours_over_sla=_hours(when.upper - due),
                       detail=f"disabled {when.describe()}, {_hours(when.upper - due)} h after "
                              f"the {inputs.policy.deprovision_sla_hours:g} h SLA")
        return out
    if when.upper <= due:
        out.update(result=ON_TIME, hours_to_disable=_hours(when.upper - term),
                   detail=f"disabled {when.describe()}")
    elif when.lower is not None and when.lower > due:
        out.update(result="disabled_late", hours_over_sla=_hours(when.lower - due),
                   hours_to_disable=_hours(when.lower - term),
                   detail=f"disabled {when.describe()}: at least {_hours(when.lower - due)} h "
                          f"after the {inputs.policy.deprovision_sla_hours:g} h SLA")
    else:
        out.update(result="disable_time_unknown",
                   detail=f"disabled {when.describe()}; the bounds straddle the SLA deadline "
                          f"{due:%Y-%m-%d %H:%M} UTC")
    return out


def evaluate(inputs: ControlInputs) -> ControlResult:
    items = inputs.termination_items
    verdicts = pd.DataFrame([judge(inputs, item) for item in items.itertuples()],
                            index=items.index, columns=[
                                "result", "detail", "disabled_lower", "disabled_upper", "basis",
                                "disabled", "hours_to_disable", "hours_over_sla"])
    offboarding = _offboarding_tickets(inputs, items)
    findings = []
    for item, verdict, ticket in zip(items.itertuples(), verdicts.itertuples(),
                                     offboarding.itertuples()):
        if verdict.result in (ON_TIME, PENDING):
            continue
        findings.append(Finding(
            control=ID, reason=verdict.result, source=item.source, account=item.account,
            email=item.person, person_id=item.person_id, detail=verdict.detail,
            display_name=item.display_name, evidence=verdict.basis,
            terminated_at=item.termination_effective,
            disabled_at=verdict.disabled_upper if pd.notna(verdict.disabled_upper) else None,
            hours_over_sla=verdict.hours_over_sla, ticket=ticket.offboarding_ticket,
            ticket_url=ticket.offboarding_ticket_url))
    population = pd.concat([_population(items, verdicts), offboarding], axis=1)
    notes = []
    missing = int(offboarding["offboarding_ticket"].isna().sum())
    if missing and inputs.ticket_sources:
        notes.append(f"{missing} of {len(items)} leaver accounts have no offboarding ticket on "
                     "record (informational, not an exception)")
    limitations = source_limitations(inputs)
    pending = int((verdicts["result"] == PENDING).sum())
    if pending:
        limitations.append(f"{pending} account(s) of recent leavers are still within the SLA "
                           "and cannot be judged yet")
    return ControlResult(id=ID, title=TITLE, description=DESCRIPTION,
                         complete=not limitations, limitations=limitations,
                         population=population, exceptions=findings, notes=notes)


def _population(items: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    cols = ["person_id", "person", "name", "worker_type", "terminated_on",
            "termination_effective", "source", "account", "display_name"]
    base = items.reindex(columns=cols).rename(columns={"person": "email"})
    return pd.concat([base, verdicts[["result", "disabled", "basis", "disabled_lower",
                                      "disabled_upper", "hours_to_disable", "hours_over_sla"]]],
                     axis=1)


def _offboarding_tickets(inputs: ControlInputs, items: pd.DataFrame) -> pd.DataFrame:
    """The offboarding trail beside each leaver's disable times: the person's offboarding
    ticket closest to the termination (the source system is not required to match)."""
    indexed = approvals.index_tickets(inputs.tickets, inputs.identity)
    out = []
    for item in items.itertuples():
        tickets = approvals.candidates(indexed, item.person, ("offboarding",), None)
        if tickets.empty:
            out.append((None, None, pd.NaT, pd.NaT))
            continue
        distance = (tickets["requested_at"] - item.termination_effective).abs()
        best = tickets.loc[distance.idxmin()] if distance.notna().any() else tickets.iloc[0]
        out.append((best["key"], best["url"], best["requested_at"], best["resolved_at"]))
    return pd.DataFrame(out, index=items.index, columns=[
        "offboarding_ticket", "offboarding_ticket_url", "offboarding_requested_at",
        "offboarding_resolved_at"])
