"""The one-way pipeline: integration → snapshot store → timeline → controls → evidence.

``collect`` runs integrations and stores what they return; ``build_evidence`` reads only the
store (never a live API) and judges a period; ``reports`` renders the result.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from . import __version__
from .allowlist import load_allowlist
from .config import Config, validate_sources
from .controls import ControlInputs, SourceState, evaluate_all
from .errors import AccessproofError, ConfigError
from .hr_history import role_changes
from .integration import CollectContext
from .periods import Period
from .registry import get_integration
from .results import Evidence, SnapshotRef, SourceReport
from .schema import empty, normalize_emails
from .store import Snapshot, SnapshotStore, utc_now
from .timeline import SourceTimeline, build_timeline

log = logging.getLogger("accessproof")

EVENT_OVERLAP = pd.Timedelta(hours=1)   # re-read the edge of the last window; ids dedupe it
GAP_THRESHOLD = pd.Timedelta(hours=36)  # daily collection plus slack


@dataclass
class CollectOutcome:
    source: str
    type: str
    status: str                 # ok | degraded | failed
    error: str | None
    records: dict[str, int]
    snapshot: Snapshot | None
    exit_code: int = 0


def _all_sources(config: Config) -> list[tuple[str, str, object]]:
    return [("hr", config.hr.type, config.hr)] + [(s.name, s.type, s) for s in config.sources]


def collect(config: Config, *, only: list[str] | None = None,
            now: dt.datetime | None = None,
            progress: Callable[[str], None] | None = None) -> list[CollectOutcome]:
    """Collect every configured source (or ``only`` those named) into the store."""
    validate_sources(config)
    store = SnapshotStore(config.store_path)
    wanted = _all_sources(config)
    if only:
        known = {name for name, _, _ in wanted}
        for name in only:
            if name not in known:
                raise ConfigError(f"no source named '{name}' (configured: "
                                  f"{', '.join(sorted(known))})", file=str(config.file),
                                  section="sources")
        wanted = [w for w in wanted if w[0] in only]
    outcomes = []
    for name, type_name, source_config in wanted:
        if progress:
            progress(name)
        outcomes.append(collect_source(store, name, type_name, source_config, now=now))
    return outcomes


def collect_source(store: SnapshotStore, name: str, type_name: str, source_config,
                   *, now: dt.datetime | None = None) -> CollectOutcome:
    integration_cls = get_integration(type_name)
    started_at = pd.Timestamp(now or utc_now()).tz_convert("UTC").to_pydatetime()
    clock_start = time.monotonic()
    previous = next((s for s in reversed(store.good_snapshots(name))
                     if s.started_at <= started_at and s.window is not None), None)
    retention = integration_cls.log_retention_days
    history = retention if retention is not None else integration_cls.default_backfill_days
    backfill = getattr(source_config, "options", {}).get("backfill_days")
    limits = [d for d in (history, backfill) if d is not None]
    days = min(limits) if history is not None and limits else None   # None: no history
    earliest = started_at - dt.timedelta(days=days or 0)
    if previous is not None:
        since = max(earliest, (previous.window[1] - EVENT_OVERLAP).to_pydatetime())
    else:
        since = earliest
    writer = store.begin(name, type_name, started_at)
    ctx = CollectContext(name=name, config=source_config, now=started_at, events_since=since,
                         events_until=started_at, raw=writer.raw,
                         log=log.getChild(name), first_collection=previous is None)

    def finished() -> dt.datetime:
        return started_at + dt.timedelta(seconds=time.monotonic() - clock_start)

    log.info("collecting %s (%s)", name, type_name)
    try:
        result = integration_cls().collect(ctx)
        for table in integration_cls.tables:
            writer.write_table(table, result.tables.get(table, empty(table)))
        status = "degraded" if result.degraded else "ok"
        window = (since, started_at) if days is not None else None
        snapshot = writer.commit(finished_at=finished(), status=status,
                                 principal=result.principal, instances=result.instances,
                                 window=window, limitations=result.limitations,
                                 extra={"parameters": _public_options(source_config),
                                        "sign_in_data": result.sign_in_data,
                                        "details": result.extra})
    except AccessproofError as exc:
        # Recorded as a failed collection (raw pages kept as evidence of what went wrong), so a
        # pack knows; the other sources are still collected. Bad input exits 3, the rest 2.
        snapshot = writer.fail(str(exc), finished_at=finished())
        log.error("%s", exc)
        return CollectOutcome(name, type_name, "failed", str(exc), {}, snapshot, exc.exit_code)
    except BaseException as exc:
        if not isinstance(exc, Exception):   # interrupted: leave nothing half-written
            writer.abandon()
            raise
        message = f"source '{name}': unexpected {type(exc).__name__}: {exc}"
        log.exception("%s", message)
        snapshot = writer.fail(message, finished_at=finished())
        return CollectOutcome(name, type_name, "failed", message, {}, snapshot, 2)
    records = {t: v["records"] for t, v in snapshot.manifest["tables"].items()}
    log.info("%s: %s (%s)", name, status,
             ", ".join(f"{n} {t}" for t, n in records.items()))
    return CollectOutcome(name, type_name, status, None, records, snapshot)


def _public_options(source_config) -> dict:
    """Options as configured, secret references kept, values never resolved."""
    options = getattr(source_config, "options", None)
    if options is None:  # HR
        return {"path": str(source_config.path), "date_format": source_config.date_format,
                "timezone": source_config.timezone,
                "termination_effective": source_config.termination_effective,
                "columns": source_config.columns}
    return {k: (v.reference if hasattr(v, "reference") else v) for k, v in options.items()}


# --------------------------------------------------------------------------------------------
# judging a period from the store


def _usable(store: SnapshotStore, name: str, now: pd.Timestamp) -> tuple[list[Snapshot],
                                                                          Snapshot | None]:
    """Good snapshots taken up to ``now``, and the latest collection attempt up to ``now``."""
    runs = [s for s in store.snapshots(name) if s.started_at <= now]
    return [s for s in runs if s.good], (runs[-1] if runs else None)


def load_people(snapshots: list[Snapshot]) -> pd.DataFrame:
    """Every employment any HR snapshot showed, newest version first: people who vanish from
    later exports (some HR systems drop leavers) stay in the population."""
    if not snapshots:
        return empty("people")

    def keys(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"email": normalize_emails(frame["email"]),
                             "hired_on": frame["hired_on"].astype(object)})

    latest = snapshots[-1]
    frames = [latest.read("people")]
    seen = keys(frames[0])
    seen_files = {latest.manifest["files"].get("tables/people.parquet")}
    for snap in reversed(snapshots[:-1]):
        digest = snap.manifest["files"].get("tables/people.parquet")
        if digest in seen_files:      # the same export as one already read
            continue
        seen_files.add(digest)
        candidate = keys(snap.read("people", columns=["email", "hired_on"]))
        missing = candidate.merge(seen.drop_duplicates(), how="left", indicator=True)["_merge"] \
            .eq("left_only").to_numpy()
        if missing.any():
            older = snap.read("people")[missing]
            frames.append(older)
            seen = pd.concat([seen, keys(older)], ignore_index=True)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _latest_tickets(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Every ticket any collection saw, each in the version collected last (collections
    overlap, and a ticket changes as it is approved and resolved)."""
    if not frames:
        return empty("tickets")
    tickets = pd.concat(frames, ignore_index=True)
    return tickets.drop_duplicates(["system", "key"], keep="last").reset_index(drop=True)


def _gaps(snapshots: list[Snapshot], period: Period, until: pd.Timestamp,
          timeline: SourceTimeline | None, retention: int | None, *, hr: bool) -> list[dict]:
    """Stretches between collections longer than the source's usual cadence (and than 36 h).

    Unrecoverable only for an audit-log source whose stored events do not bridge the stretch;
    HR changes in a gap are bounded by the snapshots around it, and a source that keeps its
    records (tickets) is re-read from the previous collection on."""
    times = [s.started_at for s in snapshots]
    intervals = pd.Series(times).diff().dropna()
    threshold = max(GAP_THRESHOLD, 1.5 * intervals.median()) if len(intervals) else GAP_THRESHOLD
    points = [period.start] + [t for t in times if period.start < t < until] + [until]
    if times and times[0] <= period.start:
        points[0] = max(t for t in times if t <= period.start)
    gaps = []
    for start, end in zip(points, points[1:]):
        if end - start <= threshold:
            continue
        covered = timeline is not None and retention is not None and \
            timeline.events_cover(start, end)
        if retention is None:
            note = ("no HR snapshot: joiners, leavers and movers in this stretch are bounded by "
                    "the snapshots around it" if hr else
                    "the source keeps its records: the next collection read this stretch")
        elif covered:
            note = "bridged by the stored audit events"
        else:
            note = ("no snapshot and no stored audit events: what changed in this stretch can "
                    "no longer be recovered")
        gaps.append({"start": start, "end": end,
                     "days": round((end - start).total_seconds() / 86400, 1),
                     "unrecoverable": retention is not None and not covered, "note": note})
    return gaps


def _source_report(name: str, type_name: str, good: list[Snapshot], latest: Snapshot | None,
                   period: Period, until: pd.Timestamp, timeline: SourceTimeline | None,
                   retention: int | None, store_root) -> SourceReport:
    latest_good = good[-1] if good else None
    if latest is None:
        status, error = "missing", "never collected"
    else:
        status, error = latest.status, latest.manifest.get("error")
    manifest = latest_good.manifest if latest_good else {}
    limitations = list(manifest.get("limitations", []))
    coverage_start = (timeline.coverage_start if timeline is not None else
                      (good[0].started_at if good else None))
    coverage_end = latest_good.finished_at if latest_good else None
    if coverage_start is None or coverage_start > period.start:
        limitations.append("collection began after the period start" if coverage_start else
                           "no good snapshot")
    return SourceReport(
        name=name, type=type_name, status=status, error=error, limitations=limitations,
        coverage_start=coverage_start, coverage_end=coverage_end,
        records={t: v["records"] for t, v in manifest.get("tables", {}).items()},
        snapshots=[SnapshotRef(name, str(s.path.relative_to(store_root)), s.manifest_sha256,
                               s.started_at, s.finished_at, s.status) for s in good],
        gaps=_gaps(good, period, until, timeline, retention, hr=name == "hr"),
        ipe={k: manifest.get(k) for k in ("principal", "instances", "window", "requests",
                                          "parameters", "tool_version", "started_at",
                                          "finished_at")},
        log_retention_days=retention)


def build_evidence(config: Config, period: Period, *, now: dt.datetime | None = None,
                   verify_snapshots: bool = True) -> Evidence:
    """Judge ``period`` from the stored snapshots alone."""
    validate_sources(config)
    now = pd.Timestamp(now or utc_now()).tz_convert("UTC")
    store = SnapshotStore(config.store_path)
    until = period.judged_until(now)

    hr_good, hr_latest = _usable(store, "hr", now)
    if verify_snapshots:
        store.verify_snapshots(hr_good)
    people = load_people(hr_good)
    hr_state = SourceState("hr", config.hr.type, ok=bool(hr_latest and hr_latest.good),
                           has_snapshot=bool(hr_good))
    reports = [_source_report("hr", config.hr.type, hr_good, hr_latest, period, until, None,
                              None, store.root)]

    states, ticket_states, timelines, ticket_frames = [], [], {}, []
    for src in config.sources:
        integration = get_integration(src.type)
        good, latest = _usable(store, src.name, now)
        if verify_snapshots:
            store.verify_snapshots(good)
        state = SourceState(
            src.name, src.type, ok=bool(latest and latest.good), has_snapshot=bool(good),
            limitations=list(good[-1].manifest.get("limitations", [])) if good else [],
            sign_in_data=bool(good[-1].manifest.get("sign_in_data", True)) if good else True)
        timeline = None
        if "accounts" in integration.tables:
            states.append(state)
            timeline = build_timeline(src.name, src.type, good) if good else None
            if timeline is not None:
                timelines[src.name] = timeline
        if "tickets" in integration.tables:
            ticket_states.append(state)
            ticket_frames += [snap.read("tickets") for snap in good if snap.has_table("tickets")]
        reports.append(_source_report(src.name, src.type, good, latest, period, until, timeline,
                                      integration.log_retention_days, store.root))

    tickets = _latest_tickets(ticket_frames)
    inputs = ControlInputs(period=period, now=now, policy=config.policy,
                           hr_timezone=config.hr.timezone, people=people, hr=hr_state,
                           account_sources=states, timelines=timelines,
                           allowlist=load_allowlist(config.service_accounts_path),
                           tickets=tickets, ticket_sources=ticket_states,
                           hr_changes=role_changes(hr_good, period.start, until),
                           hr_first_snapshot=hr_good[0].started_at if hr_good else None)
    controls = evaluate_all(inputs)
    hires = people[people["hired_on"].map(
        lambda d: d is not None and period.start.date() <= d < until.date() + dt.timedelta(1))]
    leavers = people[people["termination_effective"].notna()
                     & (people["termination_effective"] >= period.start)
                     & (people["termination_effective"] < until)]
    populations = {"hr-new-hires": hires, "hr-terminations": leavers}
    for name, timeline in timelines.items():
        populations[f"{name}-account-changes"] = timeline.changes(period.start, until)
    return Evidence(
        period=period, generated_at=now.to_pydatetime(), judged_until=until,
        tool_version=__version__, sources=reports, controls=controls,
        policy=config.policy.__dict__, config_digest=config.digest(),
        hr_timezone=config.hr.timezone, extra_populations=populations)
