"""Movers: department and title changes between consecutive HR snapshots (DESIGN §4).

HR exports carry no history of their own, so a change is known only as "different from the
previous snapshot": it happened between the two collections, a bounded time.
"""

from __future__ import annotations

import pandas as pd

from .schema import normalize_emails
from .store import Snapshot

FIELDS = ("department", "title")
_COLUMNS = ["person_id", "email", "hired_on", "department", "title"]
CHANGE_COLUMNS = ["person", "person_id", "field", "old", "new", "lower", "upper"]


def _frame(snap: Snapshot) -> pd.DataFrame:
    frame = snap.read("people", columns=_COLUMNS)
    frame["person"] = normalize_emails(frame["email"])
    frame["hired_on"] = frame["hired_on"].astype(object)
    return frame.drop_duplicates(["person", "hired_on"], keep="last")


def role_changes(snapshots: list[Snapshot], start: pd.Timestamp,
                 end: pd.Timestamp) -> pd.DataFrame:
    """Changes of department or title whose bounds touch [start, end), oldest first.

    Identical exports are skipped by their file hash, so a quarter of unchanged daily exports
    costs one read."""
    changes, previous, previous_hash = [], None, None
    for snap in snapshots:
        digest = snap.manifest["files"].get("tables/people.parquet")
        if digest == previous_hash:
            previous = (snap, previous[1])   # same content; the bound moves forward
            continue
        current = _frame(snap)
        if previous is not None:
            before_snap, before = previous
            lower, upper = before_snap.started_at, snap.finished_at
            if upper >= start and lower < end:
                both = before.merge(current, on=["person", "hired_on"],
                                    suffixes=("_old", "_new"))
                for field in FIELDS:
                    old, new = both[f"{field}_old"], both[f"{field}_new"]
                    moved = both[old.notna() & new.notna() & (old != new)]
                    changes.append(pd.DataFrame({
                        "person": moved["person"], "person_id": moved["person_id_new"],
                        "field": field, "old": moved[f"{field}_old"],
                        "new": moved[f"{field}_new"], "lower": lower, "upper": upper}))
        previous, previous_hash = (snap, current), digest
    if not changes:
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    # one change per person and pair of snapshots, however many fields moved together
    flat = pd.concat(changes, ignore_index=True)
    grouped = flat.groupby(["person", "lower", "upper"], sort=False).agg(
        person_id=("person_id", "last"), field=("field", ", ".join),
        old=("old", lambda v: " / ".join(map(str, v))),
        new=("new", lambda v: " / ".join(map(str, v)))).reset_index()
    return grouped.sort_values(["upper", "person"], kind="stable")[CHANGE_COLUMNS] \
        .reset_index(drop=True)
