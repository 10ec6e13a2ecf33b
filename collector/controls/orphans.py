"""`orphaned-accounts`: every account enabled at the period end belongs to a current person
(DESIGN §4). Allowlisted service accounts (owner, reason, expiry) are excluded and listed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..identity import AMBIGUOUS, LINKED, UNLINKED
from ..results import ControlResult, Finding
from ..schema import normalize_email, normalize_emails
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
    person = normalize_emails(people["email"])
    eff = people["termination_effective"]
    current = eff.isna() | (eff >= inputs.period.start)
    standing = pd.Series(current.to_numpy(), index=person).groupby(level=0).any()
    return standing.map({True: "current", False: "left_before"})


def _allowlist_matches(inputs: ControlInputs, src, logins: pd.Series) -> list:
    """The allowlist entry for each login, or None (the list is short; the logins are not)."""
    by_login: dict[str, list] = {}
    for entry in inputs.allowlist:
        by_login.setdefault(entry.account.strip().lower(), []).append(entry)
    keys = logins.astype("string").str.strip().str.lower()
    out = [None] * len(keys)
    for i in np.flatnonzero(keys.isin(list(by_login)).fillna(False).to_numpy()):
        out[i] = next((e for e in by_login[keys.iloc[i]]
                       if e.matches(src.name, src.type, logins.iloc[i])), None)
    return out


def evaluate(inputs: ControlInputs) -> ControlResult:
    standing = _person_standing(inputs)
    limitations = source_limitations(inputs)
    populations, excluded, findings = [], [], []
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
        enabled = np.flatnonzero(tl.state[:, idx] == ENABLED)
        acc = tl.accounts.iloc[enabled].reset_index(drop=True)
        links = inputs.links[src.name].iloc[enabled].reset_index(drop=True)
        frame = pd.DataFrame({
            "source": src.name, "instance": acc["instance"], "account": acc["login"],
            "display_name": acc["display_name"], "email": acc["email"], "kind": acc["kind"],
            "privileged": acc["privileged"], "as_of": as_of, "linked_person": links["person"]})
        entries = _allowlist_matches(inputs, src, acc["login"])
        active = np.array([e is not None and e.active_on(as_of.date()) for e in entries],
                          dtype=bool)
        for i in np.flatnonzero(active):
            e = entries[i]
            excluded.append({**frame.iloc[i].to_dict(), "owner": e.owner, "reason": e.reason,
                             "expires": e.expires})
        left = links["person"].map(standing).eq("left_before").to_numpy()
        link = links["link"].to_numpy()
        reason = np.select([link == UNLINKED, link == AMBIGUOUS, (link == LINKED) & left],
                           ["no_hr_record", "ambiguous_hr_record", "terminated_before_period"],
                           default="ok")
        frame["result"] = reason
        frame = frame[~active]
        populations.append(frame)
        for i in np.flatnonzero((reason != "ok") & ~active):
            row = frame.loc[i]
            person = row["linked_person"]
            if reason[i] == "no_hr_record":
                detail = "no HR record matches the account's email"
                if entries[i] is not None:
                    detail += f"; allowlist entry expired on {entries[i].expires}"
            elif reason[i] == "ambiguous_hr_record":
                candidates = inputs.identity.ambiguous.get(normalize_email(row["email"]), [])
                detail = f"the account's email matches several people: {', '.join(candidates)}"
            else:
                detail = "the person left before the period and the account is still enabled"
            findings.append(Finding(
                control=ID, reason=str(reason[i]), source=src.name, account=row["account"],
                email=person or row["email"],
                person_id=inputs.identity.person_ids.get(person) if person else None,
                detail=detail, display_name=row["display_name"],
                evidence=f"snapshot {as_of:%Y-%m-%d %H:%M} UTC"))
    population = pd.concat(populations, ignore_index=True) if populations else pd.DataFrame(
        columns=["source", "instance", "account", "display_name", "email", "kind", "privileged",
                 "as_of", "linked_person", "result"])
    return ControlResult(id=ID, title=TITLE, description=DESCRIPTION, complete=not limitations,
                         limitations=limitations, population=population, exceptions=findings,
                         excluded=pd.DataFrame(excluded) if excluded else None)
