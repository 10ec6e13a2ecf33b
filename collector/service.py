"""Recorded runs and the scheduler service (``accessproof serve``).

The scheduler only calls the pipeline (DESIGN §2). Every run — from the command line or from
the scheduler — goes through ``Runner``: it takes the store's run lock (runs never overlap),
records the run in ``<store>/runs.sqlite``, and notifies after a pack or a failed run.

``serve`` is an APScheduler 3 ``BlockingScheduler``:

- timezone from ``[schedule] timezone``; cron triggers ``[schedule] collect`` (daily) and
  ``[schedule] pack`` (after each quarter; it packs the UTC quarter that ended before the
  scheduled time);
- persistent ``SQLAlchemyJobStore`` (``<store>/scheduler.sqlite``, or ``[schedule] database_url``
  for PostgreSQL), fixed job ids, ``replace_existing=True``;
- ``misfire_grace_time=None`` + ``coalesce=True``: after downtime, exactly one catch-up run.
  ``replace_existing`` alone would overwrite the stored next run time with a future one and
  silently drop the missed run, so a stored next run time in the past is carried over;
- ``max_instances=1`` and jobs run one at a time in the main thread (``MainThreadExecutor``):
  a SIGTERM raises ``Stopped`` inside the run, the pipeline abandons its work directory (nothing
  half-written is published), the run is recorded as interrupted and runs again once when the
  service starts. A crash mid-run has the same effect: the job store moves on to the next run
  time only after a run has finished;
- ``<store>/serve.lock`` keeps a second ``serve`` on the same store from starting.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo

from .config import Config, Secret, load_config, validate_sources
from .errors import AccessproofError, ConfigError
from .logsetup import Progress
from .notify import Notice, Notifier
from .runs import (STATUS_OF_EXIT, RunHistory, SourceRecord, describe_holder, run_lock,
                   service_lock)

log = logging.getLogger("accessproof.service")

JOB_IDS = {"collect": "accessproof-collect", "pack": "accessproof-pack"}
JOBSTORE_FILE = "scheduler.sqlite"
JOBS_TABLE = "apscheduler_jobs"
CATCH_UP_AFTER = dt.timedelta(minutes=1)     # a scheduled run started later than this is a catch-up
UTC = dt.timezone.utc


# --------------------------------------------------------------------------------------------
# stopping on SIGTERM


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM (or SIGINT), like ``KeyboardInterrupt``.

    It is not an ``Exception``: the pipeline treats it as an interruption and abandons the work
    directory of the source being collected; ``write_pack`` removes its work directory."""


class StopSignals:
    """The first SIGTERM/SIGINT raises ``Stopped``; later ones are ignored while stopping.
    Inside ``shielded()`` the raise waits until the block is left (bookkeeping is not cut)."""

    def __init__(self):
        self.requested: str | None = None
        self._shield = 0
        self._pending = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            return
        self.requested = signal.Signals(signum).name
        if self._shield:
            self._pending = True
            return
        raise Stopped(self.requested)

    @contextmanager
    def installed(self, signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator["StopSignals"]:
        self.requested, self._shield, self._pending = None, 0, False
        if threading.current_thread() is not threading.main_thread():
            yield self          # signals reach the main thread only
            return
        previous = {s: signal.getsignal(s) for s in signals}
        for s in signals:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextmanager
    def shielded(self) -> Iterator[None]:
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
            if not self._shield and self._pending:
                self._pending = False
                raise Stopped(self.requested)


STOP = StopSignals()


# --------------------------------------------------------------------------------------------
# recorded runs


@dataclass
class RunResult:
    kind: str                        # collect | pack | run
    trigger: str                     # cli | schedule | catch-up
    run_id: int | None = None
    exit_code: int = 0
    status: str = "running"
    outcomes: list = field(default_factory=list)       # pipeline.CollectOutcome
    evidence: Any = None                               # results.Evidence
    period: str | None = None
    pack_path: Path | None = None
    error: str | None = None
    unexpected: bool = False         # failed with an unexpected error (a bug): no exit status
    notify_failures: list[str] = field(default_factory=list)

    @property
    def recorded_exit_code(self) -> int | None:
        return None if self.status == "interrupted" or self.unexpected else self.exit_code


def _relative(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


class Runner:
    """Runs collect / pack / both under the run lock, recorded in the run history."""

    def __init__(self, config: Config, *, trigger: str = "cli",
                 scheduled_for: dt.datetime | None = None, lock_wait: float | None = 1.0,
                 notifier: Notifier | None = None, progress: bool | None = None):
        self.config = config
        self.trigger = trigger
        self.scheduled_for = scheduled_for
        self.lock_wait = lock_wait
        self.notifier = notifier if notifier is not None else Notifier.from_config(config)
        self.progress = progress

    # --- the three runs -----------------------------------------------------------------------
    def collect(self, only: list[str] | None = None) -> RunResult:
        return self._run("collect", None, lambda r, h: self._collect(r, h, only))

    def pack(self, period_label: str) -> RunResult:
        return self._run("pack", period_label, lambda r, h: self._pack(r, h, period_label))

    def collect_and_pack(self, period_label: str) -> RunResult:
        def both(result: RunResult, history: RunHistory) -> None:
            self._collect(result, history, None)
            self._pack(result, history, period_label)
        return self._run("run", period_label, both)

    def record_failure(self, kind: str, error: AccessproofError) -> RunResult:
        """A run that could not start (e.g. the configuration became invalid): recorded and
        notified like any failed run."""
        def fail(result, history):
            raise error
        try:
            return self._run(kind, None, fail)
        except AccessproofError:
            return self._last

    # --- steps --------------------------------------------------------------------------------
    def _collect(self, result: RunResult, history: RunHistory, only: list[str] | None) -> None:
        from .pipeline import collect
        validate_sources(self.config)
        names = ["hr"] + [s.name for s in self.config.sources]
        if only:
            unknown = [n for n in only if n not in names]
            if unknown:
                raise ConfigError(f"no source named '{unknown[0]}' (configured: "
                                  f"{', '.join(sorted(names))})", file=str(self.config.file),
                                  section="sources")
            names = [n for n in names if n in only]
        with Progress(len(names), "collecting", enabled=self.progress, log=log) as progress:
            for name in names:
                progress.step(name)
                [outcome] = collect(self.config, only=[name])
                result.outcomes.append(outcome)
                history.add_sources(result.run_id, [SourceRecord(
                    source=outcome.source, type=outcome.type, stage="collect",
                    status=outcome.status, error=outcome.error, records=dict(outcome.records),
                    snapshot=_relative(outcome.snapshot.path if outcome.snapshot else None,
                                       self.config.store_path))])
                progress.advance()
        result.exit_code = max([result.exit_code] + [o.exit_code for o in result.outcomes])

    def _pack(self, result: RunResult, history: RunHistory, label: str) -> None:
        from reports.pack import write_pack

        from .periods import parse_period
        from .pipeline import build_evidence
        period = parse_period(label)
        result.period = period.label
        log.info("judging %s from the stored snapshots", period.label)
        evidence = build_evidence(self.config, period)
        result.evidence = evidence
        result.pack_path = write_pack(evidence, self.config.store_path,
                                      options=self.config.pack)
        history.add_sources(result.run_id, [SourceRecord(
            source=s.name, type=s.type, stage="pack", status=s.status, error=s.error,
            records=dict(s.records)) for s in evidence.sources])
        result.exit_code = max(result.exit_code, evidence.exit_code())

    # --- bookkeeping --------------------------------------------------------------------------
    def _run(self, kind: str, period: str | None,
             body: Callable[[RunResult, RunHistory], None]) -> RunResult:
        result = self._last = RunResult(kind, self.trigger, period=period)
        store = self.config.store_path
        pending: BaseException | None = None

        def waiting(holder: dict) -> None:
            log.info("waiting for the run in progress (%s) to finish", describe_holder(holder))

        with run_lock(store, f"{kind} run ({self.trigger})", wait=self.lock_wait,
                      on_wait=waiting if self.lock_wait is None else None):
            history = RunHistory(store)
            try:
                with STOP.shielded():
                    result.run_id = history.begin(kind, self.trigger,
                                                  scheduled_for=self.scheduled_for, period=period)
                log.info("%s run #%d started (%s)", kind, result.run_id, self.trigger)
                body(result, history)
                result.status = STATUS_OF_EXIT.get(result.exit_code, "error")
            except (Stopped, KeyboardInterrupt) as exc:
                result.status = "interrupted"
                result.error = (f"stopped by {exc or 'an interrupt'}: the run was abandoned, "
                                "nothing half-written was published")
                pending = exc
            except AccessproofError as exc:
                result.exit_code = max(result.exit_code, exc.exit_code)
                result.status = STATUS_OF_EXIT.get(result.exit_code, "error")
                result.error = str(exc)
                pending = exc
            except Exception as exc:  # noqa: BLE001 - recorded, then re-raised
                result.status = "error"             # a bug: no exit status of the contract
                result.unexpected = True
                result.error = f"unexpected {type(exc).__name__}: {exc}"
                log.exception("%s run failed unexpectedly", kind)
                pending = exc
            # The outcome is decided: a stop signal arriving from here on waits until it is
            # recorded (and notified), and then only stops the caller — a finished run is
            # never reported as interrupted (the caller sees STOP.requested).
            try:
                with STOP.shielded():
                    if result.run_id is not None:
                        evidence = result.evidence
                        history.finish(
                            result.run_id, status=result.status,
                            exit_code=result.recorded_exit_code,
                            error=result.error, period=result.period,
                            pack_path=str(result.pack_path) if result.pack_path else None,
                            pack_status=evidence.status if evidence is not None else None,
                            exceptions=len(evidence.exceptions) if evidence is not None
                            else None)
                    self._log_result(result)
            except Stopped:
                pass
        if result.status != "interrupted" and self.notifier.enabled and (
                result.pack_path is not None or result.exit_code >= 2
                or result.status == "error"):
            try:
                with STOP.shielded():
                    result.notify_failures = self.notifier.send(summary(result, self.config))
            except Stopped:
                pass
        if pending is not None:
            raise pending
        return result

    @staticmethod
    def _log_result(result: RunResult) -> None:
        level = logging.INFO if result.status in ("ok", "exceptions") else logging.WARNING
        detail = f", pack {result.pack_path}" if result.pack_path else ""
        code = "" if result.recorded_exit_code is None \
            else f" (exit status {result.exit_code})"
        log.log(level, "%s run #%s finished: %s%s%s%s", result.kind, result.run_id,
                result.status, code, detail, f": {result.error}" if result.error else "",
                extra={"run_id": result.run_id, "kind": result.kind, "status": result.status})


def summary(result: RunResult, config: Config) -> Notice:
    """The notification text of a run: what happened, the pack path, what to look at."""
    host = socket.gethostname()
    lines: list[str] = []
    failed = [o.source for o in result.outcomes if o.status == "failed"]
    evidence = result.evidence
    if result.pack_path is not None and evidence is not None:
        problems = []
        if evidence.exceptions:
            problems.append(f"{len(evidence.exceptions)} exception(s)")
        if evidence.any_source_failed:
            problems.append("a source failed")
        subject = (f"pack {result.period}: {evidence.status}"
                   + (f", {', '.join(problems)}" if problems else ""))
        lines.append(f"Evidence pack for {result.period} written to:")
        lines.append(f"  {result.pack_path}")
        lines.append("")
        lines.append(f"Pack status: {evidence.status}"
                     + (" (period in progress)" if evidence.in_progress else "")
                     + f"; exit status {result.exit_code}")
        lines.append("Controls:")
        for control in evidence.controls:
            lines.append(f"  {control.id}: {control.status}, population "
                         f"{control.population_size}, exceptions {len(control.exceptions)}")
        lines.append("Sources:")
        for source in evidence.sources:
            lines.append(f"  {source.name} ({source.type}): {source.status}"
                         + (f" - {source.error}" if source.error else ""))
    else:
        subject = f"{result.kind} run failed" + (f": {', '.join(failed)}" if failed else "")
        code = result.recorded_exit_code
        lines.append(f"The {result.kind} run #{result.run_id} on {host} failed ({result.status}"
                     + (f", exit status {code}" if code is not None else "") + ").")
    if result.outcomes:
        lines.append("Collection:")
        for outcome in result.outcomes:
            counts = ", ".join(f"{n} {t}" for t, n in outcome.records.items())
            lines.append(f"  {outcome.source}: {outcome.status}"
                         + (f" ({counts})" if counts else "")
                         + (f" - {outcome.error}" if outcome.error else ""))
    if result.error:
        lines.append(f"Error: {result.error}")
    lines.append("")
    lines.append(f"Run #{result.run_id} ({result.trigger}) on {host}; store {config.store_path}.")
    lines.append(f"Details: accessproof status --config {config.file}")
    return Notice(subject=subject, text="\n".join(lines),
                  fields={"run_id": result.run_id, "kind": result.kind,
                          "status": result.status, "exit_code": result.exit_code,
                          "pack_path": str(result.pack_path) if result.pack_path else None})


# --------------------------------------------------------------------------------------------
# schedule configuration


def cron_trigger(config: Config, key: str):
    from apscheduler.triggers.cron import CronTrigger
    expression = getattr(config.schedule, key)
    try:
        return CronTrigger.from_crontab(str(expression),
                                        timezone=ZoneInfo(config.schedule.timezone))
    except ValueError as exc:
        raise ConfigError(f"invalid cron expression {expression!r} ({exc}); use five fields: "
                          "minute hour day-of-month month day-of-week, e.g. '0 2 * * *'",
                          file=str(config.file), section="schedule", key=key) from None


def schedule_triggers(config: Config) -> dict[str, Any]:
    return {kind: cron_trigger(config, kind) for kind in JOB_IDS}


def jobstore_url(config: Config) -> str:
    """The job store's SQLAlchemy URL (a secret: never logged; see ``jobstore_label``)."""
    value = config.schedule.database_url
    if value is None:
        return f"sqlite:///{(config.store_path / JOBSTORE_FILE).resolve()}"
    url = value.reveal() if isinstance(value, Secret) else str(value)
    try:
        from sqlalchemy.engine import make_url
        make_url(url)
    except Exception:  # noqa: BLE001 - sqlalchemy's ArgumentError text would echo the URL
        raise ConfigError("is not a database URL (e.g. postgresql+psycopg://user@host/db)",
                          file=str(config.file), section="schedule",
                          key="database_url") from None
    return url


def check_jobstore(config: Config) -> str:
    """The job store URL, with its database driver importable (no connection is made)."""
    url = jobstore_url(config)
    from sqlalchemy import create_engine
    try:
        create_engine(url).dispose()
    except ImportError as exc:
        raise ConfigError(f"the job store's database driver is not installed ({exc.name}); "
                          "for PostgreSQL: pip install 'psycopg[binary]' and use "
                          "postgresql+psycopg://...", file=str(config.file), section="schedule",
                          key="database_url") from None
    except Exception:  # noqa: BLE001 - the error text would echo the URL
        raise ConfigError("is not a usable database URL", file=str(config.file),
                          section="schedule", key="database_url") from None
    return url


def jobstore_label(config: Config) -> str:
    """The job store for humans: the secret reference, or the URL without its password."""
    value = config.schedule.database_url
    if isinstance(value, Secret):
        return value.reference
    if value is None:
        return str(config.store_path / JOBSTORE_FILE)
    try:
        from sqlalchemy.engine import make_url
        return make_url(str(value)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparseable database_url)"


def stored_next_run_times(url: str, *, create: bool = False) -> dict[str, dt.datetime | None]:
    """Job id → next run time as stored in the job store ({} when there is none yet).

    Reads the table directly, so no job has to be unpickled; a SQLite file that does not exist
    is not created unless ``create``."""
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.engine import make_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not create:
        database = parsed.database
        if not database or database == ":memory:" or not Path(database).exists():
            return {}
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(JOBS_TABLE):
                return {}
            rows = conn.execute(text(f"SELECT id, next_run_time FROM {JOBS_TABLE}")).fetchall()
    finally:
        engine.dispose()
    return {row[0]: None if row[1] is None else dt.datetime.fromtimestamp(row[1], UTC)
            for row in rows}


def quarter_before(at: dt.datetime):
    """The UTC quarter that ended last before ``at`` (what the pack job packs)."""
    from .periods import current_quarter
    import pandas as pd
    current = current_quarter(at)
    return current_quarter((current.start - pd.Timedelta(days=1)).to_pydatetime())


# --------------------------------------------------------------------------------------------
# the service

try:  # APScheduler is a dependency; imported lazily elsewhere to keep `--help` fast
    from apscheduler.executors.debug import DebugExecutor as _DebugExecutor
except ImportError:  # pragma: no cover
    _DebugExecutor = object  # type: ignore[assignment,misc]


try:
    from apscheduler.schedulers.blocking import BlockingScheduler as _BlockingScheduler
except ImportError:  # pragma: no cover
    _BlockingScheduler = object  # type: ignore[assignment,misc]


class ServiceScheduler(_BlockingScheduler):
    """A ``BlockingScheduler`` that can be asked to stop from inside a job: it shuts down
    between two rounds of job processing, never in the middle of one (shutting down inside a
    job would leave the round to update a job store that is already closed)."""

    stop_requested = False

    def request_stop(self) -> None:
        self.stop_requested = True
        self.wakeup()

    def _process_jobs(self):
        if not self.stop_requested:
            wait_seconds = super()._process_jobs()
            if not self.stop_requested:
                return wait_seconds
        if self.running:
            self.shutdown(wait=False)
        return None


class MainThreadExecutor(_DebugExecutor):
    """Runs each job in the scheduler's own (main) thread, one at a time.

    So SIGTERM reaches the run itself, and the job store records the next run time only after
    the run returned: a run cut short by a crash is run again (once) at the next start. Also
    tells the job the time it was scheduled for."""

    run_time: dt.datetime | None = None

    def _do_submit_job(self, job, run_times):
        self.run_time = run_times[-1]
        try:
            super()._do_submit_job(job, run_times)
        finally:
            self.run_time = None


_active: "Service | None" = None


def scheduled_job(kind: str) -> None:
    """The job function stored in the job store (by reference): one scheduled run."""
    if _active is None:
        raise RuntimeError("accessproof job run outside `accessproof serve`")
    _active.run_job(kind)


class Service:
    """``accessproof serve``. ``triggers`` / ``run_for`` / ``stop_after_runs`` are test hooks
    (short triggers instead of the configured cron; stop after a while or after N runs)."""

    def __init__(self, config_path: Path, *, triggers: dict[str, Any] | None = None,
                 run_for: float | None = None, stop_after_runs: int | None = None):
        self.config_path = Path(config_path)
        self.config = load_config(self.config_path)
        validate_sources(self.config)
        self.notifier = Notifier.from_config(self.config)
        self.triggers = schedule_triggers(self.config)
        self.triggers.update(triggers or {})
        self.url = check_jobstore(self.config)
        self.run_for = run_for
        self.stop_after_runs = stop_after_runs
        self.runs = 0
        # job id → the scheduled time of a run cut short (or skipped) by a stop
        self.interrupted: dict[str, dt.datetime] = {}
        self.scheduler = None
        self.executor: MainThreadExecutor | None = None
        self.jobstore = None

    @property
    def store_root(self) -> Path:
        return self.config.store_path

    def build_scheduler(self):
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        self.executor = MainThreadExecutor()
        self.jobstore = SQLAlchemyJobStore(url=self.url, tablename=JOBS_TABLE)
        return ServiceScheduler(
            timezone=ZoneInfo(self.config.schedule.timezone),
            jobstores={"default": self.jobstore, "internal": MemoryJobStore()},
            executors={"default": self.executor},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1})

    def add_jobs(self, scheduler) -> None:
        now = dt.datetime.now(UTC)
        stored = stored_next_run_times(self.url, create=True)
        for kind, trigger in self.triggers.items():
            job_id = JOB_IDS[kind]
            options: dict[str, Any] = {}
            previous = stored.get(job_id)
            if previous is not None and previous <= now:
                # Missed while the service was down (or cut short): run once now. Without
                # this, replace_existing would store the next future time and skip it.
                options["next_run_time"] = previous
                log.warning("the %s run scheduled for %s was missed: running it once now "
                            "(catch-up)", kind, previous.isoformat())
            scheduler.add_job(f"{__name__}:scheduled_job", trigger=trigger, args=[kind],
                              id=job_id, name=f"accessproof {kind}", replace_existing=True,
                              jobstore="default", misfire_grace_time=None, coalesce=True,
                              max_instances=1, **options)

    def run(self) -> int:
        global _active
        from apscheduler.events import (EVENT_JOB_ERROR, EVENT_JOB_EXECUTED,
                                        EVENT_JOB_MAX_INSTANCES, EVENT_JOB_SUBMITTED)
        self.store_root.mkdir(parents=True, exist_ok=True)
        with service_lock(self.store_root), STOP.installed():
            try:
                scheduler = self.scheduler = self.build_scheduler()
                self.add_jobs(scheduler)
                scheduler.add_listener(self._after_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR
                                       | EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES)
                if self.run_for is not None:
                    from apscheduler.triggers.date import DateTrigger
                    scheduler.add_job(self.request_stop, DateTrigger(
                        dt.datetime.now(UTC) + dt.timedelta(seconds=self.run_for)),
                        id="accessproof-stop", jobstore="internal")
                _active = self
                log.info("accessproof serve: store %s, job store %s, timezone %s, collect "
                         "'%s', pack '%s'", self.store_root, jobstore_label(self.config),
                         self.config.schedule.timezone, self.config.schedule.collect,
                         self.config.schedule.pack)
                scheduler.start()            # blocks until shut down
            except (Stopped, KeyboardInterrupt) as exc:
                log.info("stopping (%s)", exc or "interrupt")
            finally:
                _active = None
                try:
                    with STOP.shielded():
                        self._shutdown()
                        self._reschedule_interrupted()
                except Stopped:
                    pass
            try:
                with STOP.shielded():
                    for kind, when in self._next_runs():
                        log.info("next %s run: %s", kind, when)
            except Stopped:
                pass
        log.info("accessproof serve stopped")
        return 0

    # --- jobs ---------------------------------------------------------------------------------
    def run_job(self, kind: str) -> None:
        scheduled = self.executor.run_time if self.executor else None
        if STOP.requested:           # due in the same round as the run that was stopped
            if scheduled is not None:
                self.interrupted.setdefault(JOB_IDS[kind], scheduled)
            self.request_stop()
            return
        now = dt.datetime.now(UTC)
        trigger = "catch-up" if scheduled and now - scheduled > CATCH_UP_AFTER else "schedule"
        log.info("scheduled %s run (%s, scheduled for %s)", kind, trigger,
                 scheduled.isoformat() if scheduled else "now")
        try:
            try:
                config = load_config(self.config_path)
                if config.store_path.resolve() != self.store_root.resolve():
                    raise ConfigError("the store path changed while the service was running; "
                                      "restart the service", file=str(config.file),
                                      section="store", key="path")
                notifier = Notifier.from_config(config)
            except AccessproofError as exc:
                log.error("%s run not started: %s", kind, exc)
                Runner(self.config, trigger=trigger, scheduled_for=scheduled, lock_wait=None,
                       notifier=self.notifier, progress=False).record_failure(kind, exc)
                return
            runner = Runner(config, trigger=trigger, scheduled_for=scheduled, lock_wait=None,
                            notifier=notifier, progress=False)
            if kind == "collect":
                runner.collect()
            else:
                runner.pack(quarter_before(scheduled or now).label)
        except (Stopped, KeyboardInterrupt):
            if scheduled is not None:
                self.interrupted[JOB_IDS[kind]] = scheduled
            log.warning("stopping: the %s run was interrupted; nothing half-written was "
                        "published; it runs again when the service starts", kind)
            self.request_stop()
        except AccessproofError as exc:
            log.error("%s run failed: %s", kind, exc)
        except Exception:  # noqa: BLE001 - the service keeps running; already recorded
            log.exception("%s run failed unexpectedly", kind)
        finally:
            self.runs += 1
            if self.stop_after_runs is not None and self.runs >= self.stop_after_runs:
                self.request_stop()

    def _after_event(self, event) -> None:
        # A stop that hit the executor around (not inside) the job function: keep the run.
        if isinstance(getattr(event, "exception", None), (Stopped, KeyboardInterrupt)) and \
                event.job_id in JOB_IDS.values() and event.scheduled_run_time is not None:
            self.interrupted.setdefault(event.job_id, event.scheduled_run_time)
        if STOP.requested:
            self.request_stop()

    def request_stop(self) -> None:
        """Stop after the current round of jobs (safe inside a job)."""
        if self.scheduler is not None:
            self.scheduler.request_stop()

    def _shutdown(self) -> None:
        """Shut the scheduler down now (outside job processing only)."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _reschedule_interrupted(self) -> None:
        """An interrupted run keeps its scheduled time in the job store, so that the next start
        runs it once (as after a crash)."""
        if not self.interrupted or self.jobstore is None:
            return
        try:
            for job_id, scheduled in self.interrupted.items():
                job = self.jobstore.lookup_job(job_id)
                if job is not None and (job.next_run_time is None
                                        or job.next_run_time > scheduled):
                    job._modify(next_run_time=scheduled)
                    self.jobstore.update_job(job)
        except Exception:  # noqa: BLE001 - best effort; the next scheduled run still happens
            log.exception("could not keep the interrupted run in the job store")
        finally:
            self.jobstore.shutdown()

    def _next_runs(self) -> list[tuple[str, str]]:
        try:
            stored = stored_next_run_times(self.url)
        except Exception:  # noqa: BLE001
            return []
        names = {v: k for k, v in JOB_IDS.items()}
        now = dt.datetime.now(UTC)
        return [(names.get(job_id, job_id),
                 "paused" if t is None else t.isoformat()
                 + (" (due: runs once when the service starts)" if t <= now else ""))
                for job_id, t in sorted(stored.items())]


def serve(config_path: Path, **hooks) -> int:
    return Service(config_path, **hooks).run()


# --------------------------------------------------------------------------------------------
# status


def retention_margin_days(retention: int) -> int:
    """Warn this many days before the last good snapshot falls out of the log retention."""
    return max(7, retention // 4)


def status_report(config: Config, *, limit: int = 10,
                  now: dt.datetime | None = None) -> dict[str, Any]:
    """What ``accessproof status`` prints: service and run state, next scheduled runs, recent
    runs, and per source the age of its last good snapshot against its log retention."""
    import pandas as pd

    from .integration import Integration
    from .pipeline import GAP_THRESHOLD
    from .registry import get_integration
    from .runs import RUN_LOCK, SERVE_LOCK, FileLock, RunHistory
    from .store import SnapshotStore, iso

    now = now or dt.datetime.now(UTC)
    store_root = config.store_path
    warnings: list[dict[str, str]] = []

    serving, serve_holder = FileLock(store_root / SERVE_LOCK).is_held()
    running, run_holder = FileLock(store_root / RUN_LOCK).is_held()

    # --- schedule and job store
    schedule: dict[str, Any] = {"timezone": config.schedule.timezone,
                                "job_store": jobstore_label(config), "jobs": [], "error": None}
    stored: dict[str, dt.datetime | None] = {}
    try:
        stored = stored_next_run_times(jobstore_url(config))
    except AccessproofError as exc:
        schedule["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. the database is unreachable
        schedule["error"] = f"{type(exc).__name__}"
    for kind, job_id in JOB_IDS.items():
        next_run = stored.get(job_id)
        overdue = next_run is not None and next_run < now - CATCH_UP_AFTER and not serving
        schedule["jobs"].append({"kind": kind, "id": job_id,
                                 "cron": getattr(config.schedule, kind),
                                 "next_run": iso(next_run) if next_run else None,
                                 "overdue": overdue})
        if overdue:
            warnings.append({"level": "warning", "message":
                             f"the {kind} run scheduled for {iso(next_run)} has not run: the "
                             "service is not running (it runs once when it starts)"})
    if stored and not serving:
        warnings.append({"level": "warning",
                         "message": "the scheduler service is not running on this store"})

    # --- recent runs
    runs = []
    for run in RunHistory(store_root, readonly=True).recent(limit):
        took = run.duration
        runs.append({
            "id": run.id, "kind": run.kind, "trigger": run.trigger,
            "scheduled_for": run.scheduled_for, "started_at": run.started_at,
            "finished_at": run.finished_at,
            "duration_seconds": took.total_seconds() if took is not None else None,
            "status": run.status, "exit_code": run.exit_code, "period": run.period,
            "pack_path": run.pack_path, "pack_status": run.pack_status,
            "exceptions": run.exceptions, "error": run.error,
            "sources": [{"source": s.source, "type": s.type, "stage": s.stage,
                         "status": s.status, "error": s.error, "records": s.records,
                         "snapshot": s.snapshot} for s in run.sources]})

    # --- sources
    store = SnapshotStore(store_root)
    sources = []
    entries = [("hr", config.hr.type)] + [(s.name, s.type) for s in config.sources]
    for name, type_name in entries:
        try:
            integration: type[Integration] | None = get_integration(type_name)
        except AccessproofError:
            integration = None
        retention = integration.log_retention_days if integration else None
        title = integration.title if integration else type_name
        snapshots = store.snapshots(name)
        good = [s for s in snapshots if s.good]
        latest = snapshots[-1] if snapshots else None
        last_good = good[-1] if good else None
        age = (pd.Timestamp(now) - last_good.started_at) if last_good is not None else None
        age_days = age.total_seconds() / 86400 if age is not None else None
        entry = {"name": name, "type": type_name, "title": title,
                 "log_retention_days": retention,
                 "last_good": iso(last_good.started_at) if last_good is not None else None,
                 "age_days": round(age_days, 2) if age_days is not None else None,
                 "latest_status": latest.status if latest is not None else None,
                 "latest_at": iso(latest.started_at) if latest is not None else None,
                 "latest_error": latest.manifest.get("error") if latest is not None else None,
                 "warnings": []}

        def warn(level: str, message: str, entry=entry, name=name) -> None:
            entry["warnings"].append(message)
            warnings.append({"level": level, "message": f"{name}: {message}"})

        if last_good is None:
            warn("warning", "no good snapshot yet"
                 + (f": {title} keeps only {retention} days of audit events, and what is not "
                    "collected in time is lost" if retention else ""))
        else:
            if retention is not None:
                remaining = retention - age_days
                if remaining <= 0:
                    lost_until = pd.Timestamp(now) - pd.Timedelta(days=retention)
                    warn("error", f"the last good snapshot is {age_days:.0f} days old, beyond "
                         f"{title}'s {retention}-day log retention: changes between "
                         f"{iso(last_good.started_at)} and {iso(lost_until)} can no longer be "
                         "recovered")
                elif remaining <= retention_margin_days(retention):
                    warn("warning", f"the last good snapshot is {age_days:.0f} days old and "
                         f"{title} keeps {retention} days of audit events: collect within "
                         f"{remaining:.0f} day(s), or changes since "
                         f"{iso(last_good.started_at)} start to become unrecoverable")
            if age is not None and age > GAP_THRESHOLD and \
                    not any("log retention" in w or "audit events" in w
                            for w in entry["warnings"]):
                warn("warning", f"no good snapshot for {age_days:.1f} days (daily collection "
                     "expected)")
        if latest is not None and not latest.good:
            warn("warning", f"the latest collection ({iso(latest.started_at)}) failed: "
                 f"{latest.manifest.get('error')}")
        sources.append(entry)

    exit_code = 2 if any(s["warnings"] for s in sources) else 0
    return {
        "store": str(store_root), "config": str(config.file), "now": iso(now),
        "service": {"running": serving,
                    "holder": describe_holder(serve_holder) if serving else None},
        "run_in_progress": describe_holder(run_holder) if running else None,
        "schedule": schedule, "runs": runs, "sources": sources, "warnings": warnings,
        "exit_code": exit_code,
    }
