"""The population shared by two controls: (terminated person × linked account) for
terminations effective in the period (DESIGN §4)."""

from __future__ import annotations

import pandas as pd

from ..identity import LINKED
from ..schema import normalize_emails


def terminations_in_period(inputs) -> pd.DataFrame:
    """Employments whose termination takes effect in the period (up to now when in progress),
    with ``rehired_at``: the person's next hire, from which their accounts are legitimately used."""
    people = inputs.people.assign(person=normalize_emails(inputs.people["email"]))
    eff = people["termination_effective"]
    leavers = people[eff.notna() & (eff >= inputs.period.start)
                     & (eff < inputs.judged_until)].copy()
    hires = people[["person", "hired_on"]].dropna()

    def next_hire(person, terminated_on):
        later = hires.loc[(hires["person"] == person) & (hires["hired_on"] > terminated_on),
                          "hired_on"]
        if later.empty:
            return pd.NaT
        day = later.min()
        return pd.Timestamp(day.year, day.month, day.day, tz=inputs.hr_timezone).tz_convert("UTC")

    rehires = set(people.loc[people["person"].duplicated(), "person"])
    leavers["rehired_at"] = [next_hire(p, t) if p in rehires else pd.NaT
                             for p, t in zip(leavers["person"], leavers["terminated_on"])]
    return leavers


def build_termination_items(inputs) -> pd.DataFrame:
    """One row per (termination × account linked to that person in any account source)."""
    leavers = terminations_in_period(inputs)
    frames = []
    for name, tl in inputs.timelines.items():
        links = inputs.links[name]
        linked = links[links["link"] == LINKED]
        if linked.empty or leavers.empty:
            continue
        accounts = pd.DataFrame({"row": linked.index.to_numpy(),
                                 "person": linked["person"].to_numpy()})
        merged = leavers.merge(accounts, on="person", how="inner")
        if merged.empty:
            continue
        rows = merged["row"].to_numpy()
        merged["source"] = name
        merged["account"] = tl.accounts["login"].to_numpy()[rows]
        merged["display_name"] = tl.accounts["display_name"].to_numpy()[rows]
        frames.append(merged)
    if not frames:
        return leavers.head(0).assign(row=pd.Series(dtype="int64"), source=None, account=None,
                                      display_name=None)
    return pd.concat(frames, ignore_index=True).sort_values(
        ["termination_effective", "person", "source", "account"], kind="stable"
    ).reset_index(drop=True)
