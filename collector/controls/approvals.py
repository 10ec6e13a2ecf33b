"""Judging a change against the tickets that should have authorised it (provisioning and
movers share the rules; DESIGN §4, §9 "Tickets").

A change at a time known exactly or within [lower, upper] needs a ticket of an accepted kind, for
the same person and target system, approved no later than the change (+ grace). A bounded time
is judged conservatively: the approval must precede the earliest moment the change may have
happened. Reasons, in the order they are reported: an in-time ticket approved by the subject
is ``self_approved``; an approval after the change is ``approved_after_<change>``; a rejected
or pending ticket is ``ticket_not_approved``; none at all is ``no_ticket``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..schema import normalize_emails


@dataclass(frozen=True)
class Verdict:
    reason: str | None         # None: approved in time
    ticket: str | None
    url: str | None
    detail: str


def index_tickets(tickets: pd.DataFrame, identity) -> pd.DataFrame:
    """Tickets with ``person`` and ``approver_person``: the HR person their emails link to
    (by email or alias), else the normalised email itself."""
    if tickets.empty:
        return tickets.assign(person=pd.Series(dtype=object),
                              approver_person=pd.Series(dtype=object),
                              target=pd.Series(dtype=object))
    subject = normalize_emails(tickets["subject_email"])
    approver = normalize_emails(tickets["approver_email"])
    subject_link = identity.link(tickets["subject_email"])["person"]
    approver_link = identity.link(tickets["approver_email"])["person"]
    return tickets.assign(
        person=subject_link.where(subject_link.notna(), subject),
        approver_person=approver_link.where(approver_link.notna(), approver),
        target=tickets["target_system"].astype("string").str.strip().str.lower().astype(object))


def candidates(indexed: pd.DataFrame, person: str | None, kinds: tuple[str, ...],
               targets: tuple[str, ...] | None) -> pd.DataFrame:
    """Tickets of ``kinds`` about ``person`` (and one of ``targets`` when given)."""
    if person is None or indexed.empty:
        return indexed.head(0)
    mask = (indexed["person"] == person) & indexed["kind"].isin(kinds)
    if targets is not None:
        mask &= indexed["target"].isin([t.lower() for t in targets])
    return indexed[mask]


def _fmt(ts) -> str:
    return "unknown" if ts is None or pd.isna(ts) else f"{ts:%Y-%m-%d %H:%M} UTC"


def judge(tickets: pd.DataFrame, lower: pd.Timestamp | None, upper: pd.Timestamp | None,
          grace: pd.Timedelta, change: str) -> Verdict:
    """The verdict for one change, given the candidate tickets (see module docstring)."""
    if tickets.empty:
        return Verdict("no_ticket", None, None, f"no ticket for this {change}")
    when = lower if lower is not None and pd.notna(lower) else None
    approved = tickets[tickets["approved_at"].notna()
                       & (tickets["status"].fillna("approved").str.lower() != "rejected")]
    if when is not None:
        in_time = approved[approved["approved_at"] <= when + grace]
    else:
        in_time = approved.head(0)      # the change time is unknown: nothing is provably before
    honest = in_time[in_time["approver_person"] != in_time["person"]]
    if not honest.empty:
        best = honest.sort_values("approved_at").iloc[-1]
        return Verdict(None, best["key"], best["url"],
                       f"{best['key']} approved {_fmt(best['approved_at'])}")
    if not in_time.empty:
        best = in_time.sort_values("approved_at").iloc[-1]
        return Verdict("self_approved", best["key"], best["url"],
                       f"{best['key']} was approved by its own subject "
                       f"({best['approver_email']}) at {_fmt(best['approved_at'])}")
    if not approved.empty:
        best = approved.sort_values("approved_at").iloc[0]
        bound = (f"the {change} at {_fmt(upper)}" if when is not None and when == upper else
                 f"the {change} (between {_fmt(lower)} and {_fmt(upper)})")
        return Verdict(f"approved_after_{change}", best["key"], best["url"],
                       f"{best['key']} approved {_fmt(best['approved_at'])}, after {bound}")
    best = tickets.sort_values("requested_at").iloc[-1]
    return Verdict("ticket_not_approved", best["key"], best["url"],
                   f"{best['key']} is {str(best['status'] or 'not approved').lower()}")
