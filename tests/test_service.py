"""`accessproof serve`: the real APScheduler BlockingScheduler with short triggers.

- a missed run is caught up exactly once after a restart;
- job options (fixed ids, misfire_grace_time=None, coalesce, max_instances=1, timezone) are
  what the job store keeps;
- a second `serve` on the same store is refused; a command-line run never overlaps a run of the
  service;
- SIGTERM in the middle of a run (serve in a subprocess, a slow source) leaves the store
  consistent: every published snapshot is whole, the run is recorded as interrupted and kept
  for a catch-up.

No test sleeps more than 2 s; ports are ephemeral and paths temporary.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from click.testing import CliRunner

from collector.cli import cli
from collector.runs import RUN_LOCK, EXIT_BUSY, FileLock, RunHistory, run_lock, service_lock
from collector.service import (JOB_IDS, Service, jobstore_url, quarter_before,
                               stored_next_run_times)

UTC = dt.timezone.utc
ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, extra: str = "", timezone: str = "UTC") -> Path:
    (tmp_path / "hr.csv").write_text("id,mail,start,end\n1,alice@corp.example,2024-01-01,\n")
    config = tmp_path / "accessproof.toml"
    config.write_text(textwrap.dedent(f'''
        [store]
        path = "store"
        [hr]
        type = "csv"
        path = "hr.csv"
        date_format = "%Y-%m-%d"
        timezone = "UTC"
        [hr.columns]
        person_id = "id"
        email = "mail"
        hired_on = "start"
        terminated_on = "end"
        [schedule]
        timezone = "{timezone}"
        collect = "0 2 * * *"
        pack = "0 6 1 1,4,7,10 *"
        ''') + extra)
    return config


def runs(store: Path) -> list:
    return list(reversed(RunHistory(store, readonly=True).recent(100)))


def stored_jobs(config_path: Path) -> dict:
    """The jobs as the SQLite job store keeps them (unpickled by APScheduler itself)."""
    from collector.config import load_config
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=jobstore_url(load_config(config_path)))})
    scheduler.start(paused=True)
    try:
        return {job.id: job for job in scheduler.get_jobs()}
    finally:
        scheduler.shutdown(wait=False)


def add_stored_job(url: str, kind: str, cron: str, *, next_run_time: dt.datetime) -> None:
    """Put a job into the SQLite job store as an earlier `serve` left it."""
    from apscheduler.job import Job
    from apscheduler.schedulers.blocking import BlockingScheduler
    scheduler = BlockingScheduler(timezone=UTC)           # never started
    store = SQLAlchemyJobStore(url=url)
    store.start(scheduler, "default")
    store.add_job(Job(scheduler, id=JOB_IDS[kind], func="collector.service:scheduled_job",
                      trigger=CronTrigger.from_crontab(cron, timezone=UTC), args=[kind],
                      kwargs={}, name=f"accessproof {kind}", executor="default",
                      misfire_grace_time=None, coalesce=True, max_instances=1,
                      next_run_time=next_run_time))
    store.shutdown()


# --- job store, options, catch-up ---------------------------------------------------------------


def test_jobs_have_fixed_ids_and_the_reliability_options(tmp_path):
    config = write_config(tmp_path, timezone="America/New_York")
    for _ in range(2):          # restarting replaces the jobs, never duplicates them
        assert Service(config, run_for=0.2).run() == 0
    jobs = stored_jobs(config)
    assert set(jobs) == {"accessproof-collect", "accessproof-pack"}
    for kind, job_id in JOB_IDS.items():
        job = jobs[job_id]
        assert job.misfire_grace_time is None and job.coalesce is True
        assert job.max_instances == 1
        assert job.func_ref == "collector.service:scheduled_job" and job.args == (kind,)
        assert isinstance(job.trigger, CronTrigger)
        assert str(job.trigger.timezone) == "America/New_York"
    collect_next = jobs["accessproof-collect"].next_run_time
    assert (collect_next.hour, collect_next.minute) == (2, 0)     # 02:00 New York time
    assert collect_next.utcoffset() in (dt.timedelta(hours=-5), dt.timedelta(hours=-4))
    pack_next = jobs["accessproof-pack"].next_run_time
    assert pack_next.day == 1 and pack_next.month in (1, 4, 7, 10) and pack_next.hour == 6
    assert runs(config.parent / "store") == []       # nothing was due


def test_missed_run_is_caught_up_exactly_once_after_a_restart(tmp_path):
    config = write_config(tmp_path)
    store = config.parent / "store"
    store.mkdir()
    now = dt.datetime.now(UTC)
    latest = now.replace(hour=2, minute=0, second=0, microsecond=0)
    if latest > now:
        latest -= dt.timedelta(days=1)
    missed = latest - dt.timedelta(days=3)
    # The service ran before and stopped three days ago: three daily collect runs were missed.
    url = f"sqlite:///{store / 'scheduler.sqlite'}"
    add_stored_job(url, "collect", "0 2 * * *", next_run_time=missed)
    add_stored_job(url, "pack", "0 6 1 1,4,7,10 *",
                   next_run_time=dt.datetime.now(UTC) + dt.timedelta(days=20))

    # 1.5 s is long enough for three uncoalesced HR-only runs to show up
    assert Service(config, run_for=1.5).run() == 0
    done = runs(store)
    assert [(r.kind, r.trigger, r.status) for r in done] == [("collect", "catch-up", "ok")]
    # coalesced: one run, for the latest of the missed times
    assert done[0].scheduled_for == latest.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [s.source for s in done[0].sources] == ["hr"]
    following = stored_next_run_times(url)["accessproof-collect"]
    assert following > dt.datetime.now(UTC)          # back on the daily schedule

    assert Service(config, run_for=0.3).run() == 0      # and no second catch-up
    assert len(runs(store)) == 1


def test_quarter_just_ended():
    assert quarter_before(dt.datetime(2026, 4, 1, 6, tzinfo=UTC)).label == "2026-Q1"
    assert quarter_before(dt.datetime(2026, 1, 1, 6, tzinfo=UTC)).label == "2025-Q4"
    assert quarter_before(dt.datetime(2026, 8, 15, tzinfo=UTC)).label == "2026-Q2"


@pytest.mark.parametrize("key, value", [("collect", "61 * * * *"), ("pack", "every day"),
                                        ("timezone", "Mars/Olympus")])
def test_bad_schedule_is_a_config_error(tmp_path, key, value):
    config = write_config(tmp_path)
    text = config.read_text()
    old = next(line for line in text.splitlines() if line.startswith(f"{key} ="))
    config.write_text(text.replace(old, f'{key} = "{value}"'))
    for command in ("serve", "check"):
        result = CliRunner().invoke(cli, [command, "--config", str(config)])
        assert result.exit_code == 3, (command, result.output)
        assert "[schedule]" in result.output and f"'{key}'" in result.output
    assert not (config.parent / "store").exists()


# --- one at a time ------------------------------------------------------------------------------


def test_second_serve_on_the_same_store_is_refused(tmp_path):
    config = write_config(tmp_path)
    store = config.parent / "store"
    with service_lock(store):
        result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code == EXIT_BUSY, result.output
    assert "already running on the store" in result.output and f"pid {os.getpid()}" in result.output
    assert not (store / "scheduler.sqlite").exists()
    # once the first one is gone, a service starts again
    assert Service(config, run_for=0.1).run() == 0


def test_command_line_run_never_overlaps_a_running_one(tmp_path):
    config = write_config(tmp_path)
    store = config.parent / "store"
    with run_lock(store, "collect run (schedule)"):
        result = CliRunner().invoke(cli, ["collect", "--config", str(config)])
        assert result.exit_code == EXIT_BUSY, result.output
        assert "another run is in progress" in result.output
        assert "collect run (schedule)" in result.output
        held, holder = FileLock(store / RUN_LOCK).is_held()
        assert held and holder["pid"] == os.getpid()
    assert runs(store) == []
    assert not (store / "snapshots").exists()
    result = CliRunner().invoke(cli, ["collect", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert [r.kind for r in runs(store)] == ["collect"]
    assert not FileLock(store / RUN_LOCK).is_held()[0]


def test_a_scheduled_run_waits_for_a_command_line_run(tmp_path, caplog):
    import logging
    import threading
    from apscheduler.triggers.date import DateTrigger
    config = write_config(tmp_path)
    store = config.parent / "store"
    holding, release = threading.Event(), threading.Event()

    def command_line_run():
        with run_lock(store, "collect run (cli)"):
            holding.set()
            release.wait(5)

    class ReleaseWhenWaiting(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("waiting for the run in progress"):
                release.set()            # the command-line run finishes once the service waits

    holder = threading.Thread(target=command_line_run)
    holder.start()
    assert holding.wait(5)
    watcher = ReleaseWhenWaiting()
    logging.getLogger("accessproof.service").addHandler(watcher)
    caplog.set_level(logging.INFO)
    try:
        service = Service(config, triggers={"collect": DateTrigger(dt.datetime.now(UTC))},
                          stop_after_runs=1, run_for=10)
        assert service.run() == 0
    finally:
        logging.getLogger("accessproof.service").removeHandler(watcher)
        release.set()
        holder.join()
    assert "waiting for the run in progress (pid" in caplog.text
    assert "collect run (cli)" in caplog.text
    assert [(r.kind, r.status) for r in runs(store)] == [("collect", "ok")]


# --- SIGTERM mid-run ----------------------------------------------------------------------------

SERVE_SCRIPT = '''
import datetime as dt, sys, time
from importlib.metadata import EntryPoint
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger

from collector import registry
from collector.integration import CollectResult, Integration
from collector.logsetup import setup_logging
from collector.service import Service

MARKER = Path(sys.argv[2])


class Slow(Integration):
    """A source that takes long: it records a page, then waits to be interrupted."""
    type = "slow"
    title = "slow test source"
    tables = ("accounts",)
    permissions = ()
    log_retention_days = None

    def collect(self, ctx):
        ctx.raw.page("slow.List", {"page": 1}, endpoint="local")
        MARKER.write_text("started")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return CollectResult(tables={})


# register the test source as an installed integration would be
registry._entry_points()["slow"] = EntryPoint("slow", "not_imported:Slow", registry.GROUP)
_load = registry._load
registry._load = lambda name: Slow if name == "slow" else _load(name)
setup_logging(1)
sys.exit(Service(Path(sys.argv[1]),
                 triggers={"collect": CronTrigger(second="*", timezone="UTC")}).run())
'''


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def slow_type(monkeypatch):
    """The subprocess's test source type, known here too (so this process reads the config)."""
    from importlib.metadata import EntryPoint

    from collector import registry
    from collector.integration import Integration

    class Slow(Integration):
        type, title, tables, permissions = "slow", "slow test source", ("accounts",), ()

    monkeypatch.setitem(registry._entry_points(), "slow",
                        EntryPoint("slow", "not_imported:Slow", registry.GROUP))
    load = registry._load
    monkeypatch.setattr(registry, "_load", lambda name: Slow if name == "slow" else load(name))


def test_sigterm_mid_run_leaves_the_store_consistent(tmp_path, slow_type):
    config = write_config(tmp_path, extra='\n[[sources]]\nname = "slow-src"\ntype = "slow"\n')
    store = config.parent / "store"
    script, marker = tmp_path / "serve_slow.py", tmp_path / "slow-started"
    script.write_text(SERVE_SCRIPT)
    log_file = tmp_path / "serve.log"
    with open(log_file, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(config), str(marker)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert _wait_for(marker.exists, 30), log_file.read_text()

        # while it runs: a second service and a command-line run are refused ...
        second = CliRunner().invoke(cli, ["serve", "--config", str(config)])
        assert second.exit_code == EXIT_BUSY and f"pid {proc.pid}" in second.output
        overlapping = CliRunner().invoke(cli, ["collect", "--config", str(config)])
        assert overlapping.exit_code == EXIT_BUSY
        assert "another run is in progress" in overlapping.output
        # ... and status tells what is going on
        status = CliRunner().invoke(cli, ["status", "--config", str(config)])
        assert f"service    running (pid {proc.pid}" in status.output
        assert "run        in progress: pid" in status.output and "collect run" in status.output

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_text = log_file.read_text()
    assert "the collect run was interrupted" in log_text, log_text

    # every published snapshot is whole; the slow source published nothing
    published = [p for p in (store / "snapshots").glob("*/*") if p.is_dir()]
    assert published and all((p / "manifest.json").is_file() for p in published)
    assert not (store / "snapshots" / "slow-src").exists()
    assert [p.parent.name for p in published] == ["hr"]
    # the abandoned work directory was removed (at most .tmp could hold it, nothing reads it)
    assert not any(p.name.startswith("snapshot-slow-src") for p in (store / ".tmp").iterdir())
    assert not (store / "packs").exists()

    [run] = runs(store)
    assert (run.kind, run.status, run.exit_code) == ("collect", "interrupted", None)
    assert "SIGTERM" in run.error and run.finished_at
    assert [(s.source, s.status) for s in run.sources] == [("hr", "ok")]
    # the interrupted run keeps its scheduled time in the job store: the next start runs it
    kept = stored_next_run_times(f"sqlite:///{store / 'scheduler.sqlite'}")["accessproof-collect"]
    assert kept.strftime("%Y-%m-%dT%H:%M:%SZ") == run.scheduled_for
    # and the locks are free again
    assert not FileLock(store / "serve.lock").is_held()[0]
    assert not FileLock(store / RUN_LOCK).is_held()[0]


def test_interrupted_command_line_run_is_recorded(tmp_path, monkeypatch):
    """SIGTERM to `accessproof collect` (cron killing it): abandoned, recorded, exit 143."""
    config = write_config(tmp_path)
    store = config.parent / "store"
    from integrations.hr_csv import CsvHR
    original = CsvHR.collect

    def collect_then_get_killed(self, ctx):
        result = original(self, ctx)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)                        # interrupted by the signal right away
        return result

    monkeypatch.setattr(CsvHR, "collect", collect_then_get_killed)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(cli, ["collect", "--config", str(config)])
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "stopped by SIGTERM" in result.output
    assert signal.getsignal(signal.SIGTERM) is before          # handler restored
    [run] = runs(store)
    assert run.status == "interrupted"
    assert not (store / "snapshots" / "hr").exists()
    assert not any((store / ".tmp").iterdir())
    db = sqlite3.connect(store / "runs.sqlite")
    assert db.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone() == (0,)
    json.dumps([r.__dict__ for r in runs(store)], default=str)   # records are plain data
