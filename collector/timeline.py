"""Account timelines: what each account's state was, and when it changed (DESIGN §1, §9).

Built from a source's good snapshots (state observed at each collection) and its audit events
(exact times of change). A time of change taken from an audit event is *exact*; otherwise it is
*bounded* by the last snapshot before and the first snapshot after the change, and every estimate
says which basis it rests on.

The state of every account at every snapshot is kept as one small int8 matrix (accounts ×
snapshots), so a quarter of daily snapshots of 100,000 accounts costs ~10 MB and each question
("when was this account disabled after T?") is a scan of one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .store import Snapshot

ABSENT, DISABLED, ENABLED = 0, 1, 2
EVENT, SNAPSHOTS, ACCOUNT_RECORD, UNKNOWN = "audit event", "snapshot bound", "account record", \
    "unknown"
_KEY_SEP = "\x1f"
_NARROW = ["instance", "account_id", "login", "enabled", "last_login_at", "never_logged_in",
           "privileged"]
_ATTRIBUTES = ["instance", "account_id", "login", "email", "display_name", "kind", "privileged",
               "groups", "created_at", "employee_id", "aliases"]


@dataclass(frozen=True)
class TimeEstimate:
    """When something happened: exactly (lower == upper) or within [lower, upper]."""

    lower: pd.Timestamp | None
    upper: pd.Timestamp | None
    basis: str

    @property
    def exact(self) -> bool:
        return self.basis == EVENT

    @property
    def known(self) -> bool:
        return self.upper is not None

    def describe(self) -> str:
        if self.basis == UNKNOWN or self.upper is None:
            return "unknown"
        if self.exact or self.lower == self.upper:
            return f"{_fmt(self.upper)} ({self.basis})"
        if self.lower is None:
            return f"by {_fmt(self.upper)} ({self.basis})"
        return f"between {_fmt(self.lower)} and {_fmt(self.upper)} ({self.basis})"


def describe_bounds(lower, upper, basis: str) -> str:
    return TimeEstimate(lower, upper, basis).describe()


def _fmt(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class DisableFinding:
    """How an account stood after a reference time (a termination)."""

    still_enabled: bool
    when: TimeEstimate        # when it stopped being enabled (meaningless if still_enabled)
    last_enabled_seen: pd.Timestamp | None


def _arrow_keys(table: pa.Table) -> np.ndarray:
    """One key per row: instance + account id (login when the source has no stable id)."""
    ident = pc.cast(pc.coalesce(table["account_id"], table["login"]), pa.large_string())
    instance = pc.cast(pc.fill_null(table["instance"], ""), pa.large_string())
    sep = pa.scalar(_KEY_SEP, pa.large_string())
    return pc.binary_join_element_wise(instance, ident, sep).to_numpy(zero_copy_only=False)


def _bool(column) -> np.ndarray:
    return pc.fill_null(column, False).to_numpy(zero_copy_only=False).astype(bool)


@dataclass
class SourceTimeline:
    source: str
    source_type: str
    snapshots: list[Snapshot]
    accounts: pd.DataFrame            # one row per account; row position == state row
    state: np.ndarray                 # int8 (accounts × snapshots)
    privileged: np.ndarray            # bool (accounts × snapshots): privileged when observed
    login_known_last: np.ndarray      # per account: last snapshot index with a sign-in value
    events: pd.DataFrame              # deduplicated, with ``row`` (account position or -1)
    event_windows: list[tuple[pd.Timestamp, pd.Timestamp]]
    snap_start: pd.DatetimeIndex = field(init=False)
    snap_finish: pd.DatetimeIndex = field(init=False)

    def __post_init__(self):
        self.snap_start = pd.DatetimeIndex([s.started_at for s in self.snapshots])
        self.snap_finish = pd.DatetimeIndex([s.finished_at for s in self.snapshots])
        # events sorted by (account row, time): one account's events are a contiguous slice
        ev = self.events[self.events["row"] >= 0].sort_values(["row", "at"], kind="stable")
        self._ev = ev.reset_index(drop=True)
        self._ev_rows = ev["row"].to_numpy()
        self._ev_at = ev["at"].dt.as_unit("us").array.asi8
        self._ev_action = ev["action"].to_numpy(dtype=object)
        self._ev_ok = (ev["outcome"].fillna("success") == "success").to_numpy(dtype=bool)

    # ---- coverage -------------------------------------------------------------------------
    @property
    def coverage_start(self) -> pd.Timestamp | None:
        starts = [w[0] for w in self.event_windows]
        if len(self.snap_start):
            starts.append(self.snap_start[0])
        return min(starts) if starts else None

    @property
    def coverage_end(self) -> pd.Timestamp | None:
        return self.snap_finish[-1] if len(self.snap_finish) else None

    @property
    def events_until(self) -> pd.Timestamp | None:
        """The end of the latest stored event window."""
        return max((w[1] for w in self.event_windows), default=None)

    def events_cover(self, start: pd.Timestamp, end: pd.Timestamp) -> bool:
        """Whether the stored event history has no hole between ``start`` and ``end``."""
        cursor = start
        for w_start, w_end in self.event_windows:
            if w_start > cursor:
                break
            cursor = max(cursor, w_end)
            if cursor >= end:
                return True
        return cursor >= end

    def snapshot_at_or_after(self, when: pd.Timestamp) -> int | None:
        idx = int(self.snap_start.searchsorted(pd.Timestamp(when), side="left"))
        return idx if idx < len(self.snapshots) else None

    # ---- per-account questions --------------------------------------------------------------
    def _slice(self, row: int) -> slice:
        lo = int(np.searchsorted(self._ev_rows, row, side="left"))
        hi = int(np.searchsorted(self._ev_rows, row, side="right"))
        return slice(lo, hi)

    def events_for(self, row: int) -> pd.DataFrame:
        return self._ev.iloc[self._slice(row)]

    def _event_times(self, row: int, actions: tuple[str, ...], after, until) -> np.ndarray:
        """Times (µs) of the account's successful events of ``actions`` in (after, until]."""
        sl = self._slice(row)
        at = self._ev_at[sl]
        mask = np.fromiter((a in actions for a in self._ev_action[sl]), bool, len(at)) \
            & self._ev_ok[sl]
        if after is not None:
            mask &= at > _us(after)
        if until is not None:
            mask &= at <= _us(until)
        return at[mask]

    def _last_event(self, row: int, actions: tuple[str, ...], after, until) -> pd.Timestamp | None:
        hits = self._event_times(row, actions, after, until)
        return pd.Timestamp(int(hits[-1]), unit="us", tz="UTC") if len(hits) else None

    def disable_after(self, row: int, reference: pd.Timestamp,
                      cutoff: pd.Timestamp | None = None) -> DisableFinding:
        """When the account stopped being enabled, for the last time before ``cutoff``.

        Observations at or after ``cutoff`` (e.g. a rehire) are ignored. The last snapshot that
        saw the account enabled and the next snapshot (which saw it disabled or gone) bound the
        change; a disable or delete event inside that bound makes it exact.
        """
        n = len(self.snapshots)
        if cutoff is not None:
            n = int(self.snap_start.searchsorted(cutoff, side="left"))
        states = self.state[row, :n] if row < len(self.state) else np.zeros(0, np.int8)
        enabled_idx = np.flatnonzero(states == ENABLED)
        if len(enabled_idx) == 0:
            # never seen enabled: disabled (or deleted) before it was first observed
            deleted = self._last_event(row, ("disabled", "deleted"), None, cutoff)
            if deleted is not None:
                return DisableFinding(False, TimeEstimate(deleted, deleted, EVENT), None)
            seen = np.flatnonzero(states != ABSENT)
            if len(seen):
                first = seen[0]
                return DisableFinding(False, TimeEstimate(None, self.snap_finish[first],
                                                          SNAPSHOTS), None)
            return DisableFinding(False, TimeEstimate(None, None, UNKNOWN), None)
        last = int(enabled_idx[-1])
        lower = self.snap_start[last]
        if last + 1 >= n:
            # still enabled in the latest usable snapshot, unless deleted since
            deleted = self._last_event(row, ("deleted",), lower, cutoff)
            if deleted is not None:
                return DisableFinding(False, TimeEstimate(deleted, deleted, EVENT), lower)
            return DisableFinding(True, TimeEstimate(None, None, UNKNOWN), lower)
        upper = self.snap_finish[last + 1]
        exact = self._last_event(row, ("disabled", "deleted"), lower, upper)
        if exact is not None:
            return DisableFinding(False, TimeEstimate(exact, exact, EVENT), lower)
        return DisableFinding(False, TimeEstimate(lower, upper, SNAPSHOTS), lower)

    def creation(self, row: int) -> TimeEstimate:
        created = self._last_event(row, ("created",), None, None)
        if created is not None:
            return TimeEstimate(created, created, EVENT)
        seen = np.flatnonzero(self.state[row] != ABSENT) if row < len(self.state) else []
        record = self.accounts["created_at"].iloc[row]
        if len(seen):
            first = int(seen[0])
            # the account's own timestamp is trusted only if consistent with first sight
            if pd.notna(record) and record <= self.snap_finish[first]:
                return TimeEstimate(record, record, ACCOUNT_RECORD)
            lower = self.snap_start[first - 1] if first > 0 else None
            return TimeEstimate(lower, self.snap_finish[first], SNAPSHOTS)
        if pd.notna(record):
            return TimeEstimate(record, record, ACCOUNT_RECORD)
        return TimeEstimate(None, None, UNKNOWN)

    def deletion(self, row: int) -> TimeEstimate | None:
        """When the account disappeared, or None while it exists."""
        deleted = self._last_event(row, ("deleted",), None, None)
        if deleted is not None:
            return TimeEstimate(deleted, deleted, EVENT)
        if row >= len(self.state):
            return None
        seen = np.flatnonzero(self.state[row] != ABSENT)
        if len(seen) == 0 or seen[-1] == len(self.snapshots) - 1:
            return None
        last = int(seen[-1])
        return TimeEstimate(self.snap_start[last], self.snap_finish[last + 1], SNAPSHOTS)

    def logins_after(self, row: int, after: pd.Timestamp) -> list[pd.Timestamp]:
        return [pd.Timestamp(int(t), unit="us", tz="UTC")
                for t in self._event_times(row, ("login",), after, None)]


    def changes(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Every creation, disable and deletion that happened (or may have happened) in
        [start, end): one row per change, exact from an audit event or bounded by the two
        snapshots around it, with the basis stated."""
        kinds = {"created": (("created",), lambda a, b: (a == ABSENT) & (b != ABSENT)),
                 "disabled": (("disabled", "deleted"),
                              lambda a, b: (a == ENABLED) & (b != ENABLED)),
                 "deleted": (("deleted",), lambda a, b: (a != ABSENT) & (b == ABSENT))}
        rows = []
        for j in range(1, len(self.snapshots)):
            lower, upper = self.snap_start[j - 1], self.snap_finish[j]
            if upper < start or lower >= end:
                continue
            before, after = self.state[:, j - 1], self.state[:, j]
            for kind, (actions, test) in kinds.items():
                for row in np.flatnonzero(test(before, after)):
                    exact = self._last_event(int(row), actions, lower, upper)
                    rows.append((int(row), kind, exact or lower, exact or upper,
                                 EVENT if exact is not None else SNAPSHOTS))
        # accounts that no snapshot saw (created and deleted between collections, or before
        # the first one) are known from their events alone
        only_events = set(np.flatnonzero(self.accounts["from_events_only"].to_numpy()).tolist())
        for row in only_events:
            for kind, (actions, _) in kinds.items():
                for t in self._event_times(row, actions[:1], start - pd.Timedelta(microseconds=1),
                                           end - pd.Timedelta(microseconds=1)):
                    at = pd.Timestamp(int(t), unit="us", tz="UTC")
                    rows.append((row, kind, at, at, EVENT))
        frame = pd.DataFrame(rows, columns=["row", "change", "lower", "upper", "basis"])
        frame = frame[(frame["upper"] >= start) & (frame["lower"] < end)]
        acc = self.accounts.iloc[frame["row"].to_numpy()]
        out = pd.DataFrame({
            "source": self.source, "instance": acc["instance"].to_numpy(),
            "account_id": acc["account_id"].to_numpy(), "account": acc["login"].to_numpy(),
            "email": acc["email"].to_numpy(), "display_name": acc["display_name"].to_numpy(),
            "change": frame["change"].to_numpy(), "at_or_after": frame["lower"].to_numpy(),
            "at_or_before": frame["upper"].to_numpy(), "basis": frame["basis"].to_numpy()})
        return out.sort_values(["at_or_before", "account", "change"], kind="stable") \
            .reset_index(drop=True)

    def privilege_grants(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Accounts that became privileged in [start, end): not privileged (or absent) in one
        snapshot, privileged in the next; exact when a role-change event falls in between."""
        rows = []
        for j in range(1, len(self.snapshots)):
            lower, upper = self.snap_start[j - 1], self.snap_finish[j]
            if upper < start or lower >= end:
                continue
            granted = ~self.privileged[:, j - 1] & self.privileged[:, j] \
                & (self.state[:, j] != ABSENT)
            for row in np.flatnonzero(granted):
                exact = self._last_event(int(row), ("role_changed",), lower, upper)
                rows.append((int(row), exact or lower, exact or upper,
                             EVENT if exact is not None else SNAPSHOTS))
        return pd.DataFrame(rows, columns=["row", "lower", "upper", "basis"])


def _us(ts) -> int:
    return pd.Timestamp(ts).value // 1000   # .value is always nanoseconds


def _merge_windows(windows):
    merged: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def build_timeline(source: str, source_type: str, snapshots: list[Snapshot]) -> SourceTimeline:
    """Fold a source's good snapshots (oldest first) into one timeline."""
    snapshots = [s for s in snapshots if s.good and s.has_table("accounts")]
    key_index = pd.Index([], dtype=object)
    per_snapshot = []          # (positions, states, login_known) per snapshot
    last_login = np.zeros(0, dtype="int64")       # epoch µs, 0 = none
    never = np.zeros(0, dtype=bool)
    for snap in snapshots:
        table = snap.read_arrow("accounts", columns=_NARROW)
        keys = _arrow_keys(table)
        pos = key_index.get_indexer(keys)
        if (pos < 0).any():
            new = pd.unique(keys[pos < 0])
            key_index = key_index.append(pd.Index(new, dtype=object))
            last_login = np.concatenate([last_login, np.zeros(len(new), dtype="int64")])
            never = np.concatenate([never, np.zeros(len(new), dtype=bool)])
            pos = key_index.get_indexer(keys)
        logins = pc.cast(table["last_login_at"], pa.int64())
        has_login = pc.is_valid(logins).to_numpy(zero_copy_only=False)
        np.maximum.at(last_login, pos, pc.fill_null(logins, 0).to_numpy(zero_copy_only=False))
        never_now = _bool(table["never_logged_in"])
        never[pos] = never_now & ~has_login
        per_snapshot.append((pos, np.where(_bool(table["enabled"]), ENABLED, DISABLED)
                             .astype(np.int8), has_login | never_now,
                             _bool(table["privileged"])))

    n_acc, n_snap = len(key_index), len(snapshots)
    state = np.zeros((n_acc, n_snap), dtype=np.int8)
    privileged = np.zeros((n_acc, n_snap), dtype=bool)
    login_known_last = np.full(n_acc, -1, dtype=np.int64)
    for s_idx, (pos, states, known, priv) in enumerate(per_snapshot):
        state[pos, s_idx] = states
        privileged[pos, s_idx] = priv
        login_known_last[pos[known]] = s_idx

    # attributes from each account's latest observation: one read per distinct last snapshot
    seen_last = (state != ABSENT)
    last_seen_idx = np.where(seen_last.any(axis=1),
                             n_snap - 1 - np.argmax(seen_last[:, ::-1], axis=1), -1)
    latest_attrs = []
    for s_idx in sorted(set(last_seen_idx[last_seen_idx >= 0].tolist()), reverse=True):
        table = snapshots[s_idx].read_arrow("accounts", columns=_ATTRIBUTES)
        keys = _arrow_keys(table)
        wanted = last_seen_idx[key_index.get_indexer(keys)] == s_idx
        attrs = table.filter(pa.array(wanted)).to_pandas()
        attrs.index = keys[wanted]
        latest_attrs.append(attrs)
    if latest_attrs:
        accounts = pd.concat(latest_attrs)
        accounts = accounts[~accounts.index.duplicated(keep="first")].reindex(key_index)
    else:
        accounts = pd.DataFrame(columns=_ATTRIBUTES, index=key_index)
    accounts = accounts.reset_index(drop=True)
    accounts["last_login_at"] = pd.to_datetime(pd.Series(last_login).where(last_login > 0),
                                               unit="us", utc=True)
    accounts["never_logged_in"] = never
    accounts["first_seen"] = np.where(seen_last.any(axis=1), np.argmax(seen_last, axis=1), -1) \
        if n_snap else np.full(n_acc, -1)
    accounts["last_seen"] = last_seen_idx if n_snap else np.full(n_acc, -1)
    accounts["from_events_only"] = False

    events, windows = _load_events(snapshots)
    timeline_events, accounts, state, login_known_last = _attach_events(
        events, accounts, state, login_known_last)
    if len(state) > len(privileged):   # accounts known from events only
        privileged = np.vstack([privileged, np.zeros((len(state) - len(privileged), n_snap),
                                                     dtype=bool)])
    return SourceTimeline(source, source_type, snapshots, accounts, state, privileged,
                          login_known_last, timeline_events, windows)


def _load_events(snapshots: list[Snapshot]):
    frames, windows = [], []
    for snap in snapshots:
        if snap.window is not None:
            windows.append(snap.window)
        if snap.has_table("events"):
            frames.append(snap.read("events"))
    if frames:
        events = pd.concat(frames, ignore_index=True)
        # collections overlap on purpose; the event id makes the union exact
        events = events.drop_duplicates("event_id", keep="last").sort_values("at")
    else:
        from .schema import empty
        events = empty("events")
    return events.reset_index(drop=True), _merge_windows(windows)


def _attach_events(events, accounts, state, login_known_last):
    """Map events to account rows by (instance, login); unseen targets become new rows."""
    login_key = (accounts["instance"].astype("string").fillna("") + _KEY_SEP
                 + accounts["login"].astype("string").str.lower())
    # if a login was reused, events go to its most recently seen account
    order = accounts.sort_values("last_seen").index
    lookup = pd.Series(order, index=login_key.loc[order].to_numpy())
    lookup = lookup[~lookup.index.duplicated(keep="last")]
    ev_key = (events["instance"].astype("string").fillna("") + _KEY_SEP
              + events["target_account"].astype("string").str.lower())
    rows = ev_key.map(lookup)
    unseen = rows.isna().to_numpy() & events["target_account"].notna().to_numpy()
    if unseen.any():
        # accounts deleted before the first snapshot but seen in events are in the population
        ev = events[unseen].assign(_key=ev_key[unseen].to_numpy())
        last = ev.groupby("_key", sort=False).agg(
            instance=("instance", "last"), login=("target_account", "last"),
            email=("target_email", "last"))
        logins = last["login"].astype(object)
        email = last["email"].astype(object)
        email = email.where(email.notna(), logins.where(logins.str.contains("@"), None))
        extra = pd.DataFrame({
            "instance": last["instance"].to_numpy(), "account_id": None,
            "login": logins.to_numpy(), "email": email.to_numpy(),
            "display_name": logins.to_numpy(), "kind": "unknown", "privileged": False,
            "groups": [[] for _ in range(len(last))], "created_at": pd.NaT,
            "last_login_at": pd.NaT, "never_logged_in": False, "first_seen": -1,
            "last_seen": -1, "from_events_only": True})
        start = len(accounts)
        accounts = pd.concat([accounts, extra], ignore_index=True)
        extra_lookup = pd.Series(np.arange(start, start + len(last)), index=last.index)
        rows = rows.fillna(ev_key.map(extra_lookup))
        state = np.vstack([state, np.zeros((len(last), state.shape[1]), np.int8)])
        login_known_last = np.concatenate([login_known_last, np.full(len(last), -1, np.int64)])
    events = events.assign(row=rows.fillna(-1).astype("int64"))
    return events, accounts, state, login_known_last
