"""`role-change-approved`: movers and privileged grants are approved before the change
(DESIGN §4).

Two kinds of change are judged: a department or title change between HR snapshots (``source``
is ``hr`` and ``account`` the person's email), and an account becoming privileged in an account
source (exact from a role-change audit event, else bounded by snapshots). Each needs a
``role_change`` or ``access_request`` ticket for the person, approved before the change.
"""

from __future__ import annotations

import pandas as pd

from ..identity import LINKED
from ..results import ControlResult, Finding
from ..schema import normalize_email
from ..timeline import describe_bounds
from . import approvals
from .base import source_limitations
from .inputs import ControlInputs
from .provisioning import ticket_source_limitations

ID = "role-change-approved"
TITLE = "Role changes approved before they happen"
DESCRIPTION = ("Every change of department or title in the HR records during the period, and "
               "every account that became privileged during the period, is backed by a "
               "role-change or access-request ticket for the person, approved by someone else "
               "before the change (plus the configured grace). HR changes are bounded by the "
               "HR snapshots around them and judged by the earlier bound.")
KINDS = ("role_change", "access_request")


def evaluate(inputs: ControlInputs) -> ControlResult:
    start, until = inputs.period.start, inputs.judged_until
    grace = pd.Timedelta(minutes=inputs.policy.approval_grace_minutes)
    indexed = approvals.index_tickets(inputs.tickets, inputs.identity)
    rows, findings = [], []

    def judge(person, lower, upper, basis, source, account, display_name, what, targets):
        tickets = approvals.candidates(indexed, person, KINDS, targets)
        verdict = approvals.judge(tickets, lower, upper, grace, "change")
        rows.append({"source": source, "account": account, "person": person, "change": what,
                     "at_or_after": lower, "at_or_before": upper, "basis": basis,
                     "ticket": verdict.ticket, "ticket_url": verdict.url,
                     "result": verdict.reason or "approved", "detail": verdict.detail})
        if verdict.reason:
            findings.append(Finding(
                control=ID, reason=verdict.reason, source=source, account=account,
                email=person, person_id=inputs.identity.person_ids.get(person) if person else None,
                detail=f"{what}: {verdict.detail}", display_name=display_name, evidence=basis,
                ticket=verdict.ticket, ticket_url=verdict.url))

    changes = inputs.hr_changes
    in_period = changes[(changes["upper"] >= start) & (changes["lower"] < until)] \
        if len(changes) else changes
    for change in in_period.itertuples():
        judge(change.person, change.lower, change.upper, "HR snapshots", "hr", change.person,
              None, f"{change.field} changed from {change.old!r} to {change.new!r}", None)

    for src in inputs.account_sources:
        tl = inputs.timelines.get(src.name)
        if tl is None:
            continue
        links = inputs.links[src.name]
        grants = tl.privilege_grants(start, until)
        for grant in grants.itertuples():
            acc = tl.accounts.iloc[grant.row]
            link = links.iloc[grant.row]
            person = link["person"] if link["link"] == LINKED else normalize_email(acc["email"])
            what = (f"became privileged {describe_bounds(grant.lower, grant.upper, grant.basis)}"
                    f" (groups: {', '.join(acc['groups']) if len(acc['groups']) else 'none'})")
            judge(person, grant.lower, grant.upper, grant.basis, src.name, acc["login"],
                  acc["display_name"], what, (src.name, src.type))

    limitations = source_limitations(inputs) + ticket_source_limitations(inputs)
    first = inputs.hr_first_snapshot
    if first is None or first > start:
        limitations.append("the HR snapshots do not reach back to the period start, so movers "
                           "before the first one cannot be seen")
    population = pd.DataFrame(rows, columns=[
        "source", "account", "person", "change", "at_or_after", "at_or_before", "basis",
        "ticket", "ticket_url", "result", "detail"])
    return ControlResult(id=ID, title=TITLE, description=DESCRIPTION, complete=not limitations,
                         limitations=limitations, population=population, exceptions=findings)
