"""`no-access-after-termination`: no successful sign-in after the termination took effect
(plus ``login_grace_minutes``), DESIGN §4 and §9 "Sign-ins".

Evidence: successful sign-in events, and the account's last-successful-sign-in value in any
snapshot ("never signed in" is a value too). An item is decided when the source's event history
covers the time from the termination onwards, or when the account's latest snapshot, taken after
the termination, carries a sign-in value; anything else is a limitation, never a silent pass.
"""

from __future__ import annotations

import pandas as pd

from ..results import ControlResult, Finding
from .base import source_limitations
from .inputs import ControlInputs

ID = "no-access-after-termination"
TITLE = "No sign-in after termination"
DESCRIPTION = ("For every termination effective in the period and every account linked to the "
               "person, no successful sign-in happened after the termination took effect "
               "(plus the configured grace). Evidence: sign-in audit events and the accounts' "
               "last-successful-sign-in values.")


def judge(inputs: ControlInputs, item) -> dict:
    tl = inputs.timelines[item.source]
    row = int(item.row)
    threshold = item.termination_effective + pd.Timedelta(minutes=inputs.policy.login_grace_minutes)
    cutoff = item.rehired_at if pd.notna(item.rehired_at) else None

    def before_cutoff(ts):
        return cutoff is None or ts < cutoff

    logins = [t for t in tl.logins_after(row, threshold) if before_cutoff(t)]
    last_value = tl.accounts["last_login_at"].iloc[row]
    value_after = pd.notna(last_value) and last_value > threshold and before_cutoff(last_value)
    end = tl.events_until
    events_decide = end is not None and end >= item.termination_effective and \
        tl.events_cover(item.termination_effective, end)
    known_last = int(tl.login_known_last[row]) if row < len(tl.login_known_last) else -1
    last_seen = int(tl.accounts["last_seen"].iloc[row])
    value_decides = (known_last >= 0 and known_last == last_seen
                     and tl.snap_start[known_last] >= item.termination_effective)
    if logins:
        first = min(logins)
        return {"result": "login_after_termination", "evidence": "audit event",
                "login_at": first,
                "detail": f"successful sign-in at {first:%Y-%m-%d %H:%M} UTC"
                          f" ({len(logins)} after the termination)"}
    if value_after:
        return {"result": "login_after_termination", "evidence": "last sign-in value",
                "login_at": last_value,
                "detail": f"last successful sign-in {last_value:%Y-%m-%d %H:%M} UTC"}
    if events_decide or value_decides:
        return {"result": "no_login", "login_at": None,
                "evidence": "audit events" if events_decide else "last sign-in value",
                "detail": ""}
    return {"result": "undecided", "login_at": None, "evidence": None,
            "detail": "no sign-in events from the termination on and no last-sign-in value "
                      "collected after it"}


def evaluate(inputs: ControlInputs) -> ControlResult:
    items = inputs.termination_items
    verdicts = pd.DataFrame([judge(inputs, item) for item in items.itertuples()],
                            index=items.index,
                            columns=["result", "evidence", "login_at", "detail"])
    findings = [
        Finding(control=ID, reason=v.result, source=i.source, account=i.account, email=i.person,
                person_id=i.person_id, detail=v.detail, display_name=i.display_name,
                evidence=v.evidence, terminated_at=i.termination_effective)
        for i, v in zip(items.itertuples(), verdicts.itertuples())
        if v.result == "login_after_termination"]
    limitations = source_limitations(inputs)
    limitations += [f"source '{s.name}' returned no sign-in data in its latest collection"
                    + (f" ({'; '.join(s.limitations)})" if s.limitations else "")
                    for s in inputs.account_sources if s.has_snapshot and not s.sign_in_data]
    undecided = verdicts[verdicts["result"] == "undecided"]
    if len(undecided):
        by_source = items.loc[undecided.index, "source"].value_counts()
        limitations.append("no sign-in evidence after the termination for "
                           + ", ".join(f"{n} account(s) of '{s}'" for s, n in by_source.items()))
    population = pd.concat([
        items.reindex(columns=["person_id", "person", "name", "worker_type",
                               "termination_effective", "source", "account", "display_name"])
        .rename(columns={"person": "email"}),
        verdicts], axis=1)
    return ControlResult(id=ID, title=TITLE, description=DESCRIPTION, complete=not limitations,
                         limitations=limitations, population=population, exceptions=findings)
