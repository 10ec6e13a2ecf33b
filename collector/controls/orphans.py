"""`orphaned-accounts`: every account enabled at the period end belongs to a current person
(DESIGN §4). Allowlisted service accounts (owner, reason, expiry) are excluded and listed."""

from __future__ import annotations

import pandas as pd

from ..identity import AMBIGUOUS, LINKED, UNLINKED
from ..results import ControlResult, Finding
from ..schema import normalize_email
from ..timeline import ENABLED
from .base import source_limitations
from .inputs import ControlInputs

ID = "orphaned-accounts"
TITLE = "No enabled account without a current person"
DESCRIPTION = ("Every account enabled at the end of the period is linked to a person in the HR "
               "records (by email or alias) who had not left before the period, or is a "
               "service account on the allowlist with an owner, a reason and an unexpired entry.")
FRESHNESS = pd.Timedelta(days=1)


def _snapshot_for_period_end(inputs: ControlInputs, tl) -> tuple[int | None, str | None]:
    """The snapshot that shows who was enabled at the period end, and a limitation if any."""
    if not len(tl.snapshots):
        return None, None
    if inputs.period.in_progress(inputs.now):
        idx = len(tl.snapshots) - 1
        if tl.snap_start[idx] < inputs.now - FRESHNESS:
            return idx, (f"'{tl.source}': the latest snapshot "
                         f"({tl.snap_start[idx]:%Y-%m-%d %H:%M} UTC) is older than a day")
        return idx, None
    idx = tl.snapshot_at_or_after(inputs.period.end)
    if idx is not None:
        return idx, None
    idx = len(tl.snapshots) - 1
    return idx, (f"'{tl.source}': no snapshot at or after the period end; used the latest, "
                 f"{tl.snap_start[idx]:%Y-%m-%d %H:%M} UTC")


def _person_standing(inputs: ControlInputs) -> pd.Series:
    """Per person: 'current' if an employment overlaps the period, else 'left_before'."""
    people = inputs.people
    person = people["email"].map(normalize_email)
    eff = people["termination_effective"]
    current = eff.isna() | (eff >= inputs.period.start)
    standing = pd.Series(current.to_numpy(), index=person).groupby(level=0).any()
    return standing.map({True: "current", False: "left_before"})


def evaluate(inputs: ControlInputs) -> ControlResult:
    standing = _person_standing(inputs)
    limitations = source_limitations(inputs)
    rows, excluded, findings = [], [], []
    allow_by_login: dict[str, list] = {}
    for entry in inputs.allowlist:
        allow_by_login.setdefault(entry.account.strip().lower(), []).append(entry)
    for src in inputs.account_sources:
        tl = inputs.timelines.get(src.name)
        if tl is None:
            continue
        idx, limitation = _snapshot_for_period_end(inputs, tl)
        if limitation:
            limitations.append(limitation)
        if idx is None:
            continue
        as_of = tl.snap_start[idx]
        enabled = (tl.state[:, idx] == ENABLED).nonzero()[0]
        links = inputs.links[src.name].iloc[enabled]
        accounts = tl.accounts.iloc[enabled]
        for row, acc, link in zip(enabled, accounts.itertuples(), links.itertuples()):
            entry = next((e for e in allow_by_login.get(str(acc.login).strip().lower(), ())
                          if e.matches(src.name, src.type, acc.login)), None)
            base = {"source": src.name, "instance": acc.instance, "account": acc.login,
                    "display_name": acc.display_name, "email": acc.email, "kind": acc.kind,
                    "privileged": acc.privileged, "as_of": as_of, "linked_person": link.person}
            if entry is not None and entry.active_on(as_of.date()):
                excluded.append({**base, "owner": entry.owner, "reason": entry.reason,
                                 "expires": entry.expires})
                continue
            reason, detail = None, ""
            if link.link == UNLINKED:
                reason, detail = "no_hr_record", "no HR record matches the account's email"
                if entry is not None:
                    detail += f"; allowlist entry expired on {entry.expires}"
            elif link.link == AMBIGUOUS:
                candidates = inputs.identity.ambiguous.get(normalize_email(acc.email), [])
                reason = "ambiguous_hr_record"
                detail = f"the account's email matches several people: {', '.join(candidates)}"
            elif link.link == LINKED and standing.get(link.person) == "left_before":
                reason = "terminated_before_period"
                detail = "the person left before the period and the account is still enabled"
            rows.append({**base, "result": reason or "ok"})
            if reason:
                person_id = inputs.identity.person_ids.get(link.person) if link.person else None
                findings.append(Finding(
                    control=ID, reason=reason, source=src.name, account=acc.login,
                    email=link.person or acc.email, person_id=person_id, detail=detail,
                    display_name=acc.display_name, evidence=f"snapshot {as_of:%Y-%m-%d %H:%M} UTC"))
    population = pd.DataFrame(rows, columns=[
        "source", "instance", "account", "display_name", "email", "kind", "privileged", "as_of",
        "linked_person", "result"])
    return ControlResult(id=ID, title=TITLE, description=DESCRIPTION, complete=not limitations,
                         limitations=limitations, population=population, exceptions=findings,
                         excluded=pd.DataFrame(excluded) if excluded else None)
