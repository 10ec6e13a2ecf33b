"""Run history (<store>/runs.sqlite) and `accessproof status`: recent runs, next scheduled runs
from the job store, and per source the age of the last good snapshot against its log retention."""

from __future__ import annotations

import datetime as dt
import json
import socket
import sqlite3
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector import registry
from collector.cli import cli
from collector.config import load_config
from collector.integration import Integration
from collector.runs import RunHistory, SourceRecord, service_lock
from collector.service import Service, retention_margin_days, status_report
from collector.store import SnapshotStore

UTC = dt.timezone.utc


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, sources: str = "") -> Path:
    (tmp_path / "hr.csv").write_text("id,mail,start,end\n1,alice@corp.example,2024-01-01,\n")
    config = tmp_path / "accessproof.toml"
    config.write_text(textwrap.dedent('''
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
        ''') + textwrap.dedent(sources))
    return config


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def entra_like(monkeypatch):
    """A source type that keeps 30 days of audit events (as Entra ID P1/P2 does)."""
    class ThirtyDays(Integration):
        type, title, tables, permissions = "thirty_days", "Thirty-day log", ("accounts",), ()
        log_retention_days = 30

    monkeypatch.setitem(registry._entry_points(), "thirty_days",
                        EntryPoint("thirty_days", "not_imported:X", registry.GROUP))
    load = registry._load
    monkeypatch.setattr(registry, "_load",
                        lambda name: ThirtyDays if name == "thirty_days" else load(name))


def add_snapshot(store: Path, source: str, type_name: str, age: dt.timedelta, *,
                 status: str = "ok") -> None:
    started = dt.datetime.now(UTC) - age
    writer = SnapshotStore(store).begin(source, type_name, started)
    if status == "failed":
        writer.fail("source 'x': denied", finished_at=started + dt.timedelta(minutes=1))
    else:
        writer.commit(finished_at=started + dt.timedelta(minutes=1), principal="test",
                      instances=[], window=(started - dt.timedelta(days=1), started))


# --- history ------------------------------------------------------------------------------------


def test_history_records_runs_and_marks_dead_ones_abandoned(tmp_path):
    history = RunHistory(tmp_path)
    first = history.begin("collect", "schedule",
                          scheduled_for=dt.datetime(2026, 3, 1, 2, tzinfo=UTC))
    history.add_sources(first, [SourceRecord("hr", "csv", "collect", "ok",
                                             records={"people": 12}, snapshot="snapshots/hr/x")])
    history.finish(first, status="ok", exit_code=0)
    dead = history.begin("pack", "cli", period="2026-Q1")        # its process died mid-run
    third = history.begin("collect", "cli")
    history.finish(third, status="failed", exit_code=2, error="source 'aws': denied")

    by_id = {r.id: r for r in RunHistory(tmp_path, readonly=True).recent(10)}
    assert by_id[first].scheduled_for == "2026-03-01T02:00:00Z" and by_id[first].exit_code == 0
    assert by_id[first].sources[0].records == {"people": 12}
    assert by_id[first].duration is not None
    assert by_id[dead].status == "abandoned" and "process ended" in by_id[dead].error
    assert by_id[third].status == "failed" and by_id[third].error == "source 'aws': denied"
    assert [r.id for r in RunHistory(tmp_path).recent(2)] == [third, dead]


def test_readonly_history_never_creates_the_database(tmp_path):
    assert RunHistory(tmp_path / "nowhere", readonly=True).recent() == []
    assert not (tmp_path / "nowhere").exists()


def test_collect_is_recorded_per_source_and_shown_by_status(tmp_path, aws_env):
    config = write_config(tmp_path, f'''
        [[sources]]
        name = "aws-prod"
        type = "aws_iam"
        endpoint_url = "http://127.0.0.1:{closed_port()}"
        max_attempts = 1
        ''')
    result = invoke("collect", "--config", config)
    assert result.exit_code == 2, result.output
    store = tmp_path / "store"
    [run] = RunHistory(store, readonly=True).recent()
    assert (run.kind, run.trigger, run.status, run.exit_code) == ("collect", "cli", "failed", 2)
    hr, aws = run.sources
    assert (hr.source, hr.status, hr.records) == ("hr", "ok", {"people": 1})
    assert hr.snapshot.startswith("snapshots/hr/") and (store / hr.snapshot / "manifest.json") \
        .is_file()
    assert (aws.source, aws.status) == ("aws-prod", "failed") and "cannot reach" in aws.error

    status = invoke("status", "--config", config)
    assert status.exit_code == 2, status.output               # a source needs attention
    out = status.output
    assert f"#{run.id}" in out and "collect  cli" in out and "failed" in out
    assert "hr ok (1 people)" in out and "aws-prod failed" in out
    assert "aws-prod: no good snapshot yet: AWS IAM keeps only 90 days of audit events" in out
    assert "aws-prod: the latest collection" in out and "cannot reach" in out
    assert "service    not running" in out and "run        none in progress" in out
    data = json.loads(invoke("status", "--config", config, "--json").output)
    assert data["runs"][0]["sources"][1]["status"] == "failed"
    assert [s["name"] for s in data["sources"]] == ["hr", "aws-prod"]
    assert data["sources"][0]["warnings"] == [] and data["exit_code"] == 2


# --- status: retention --------------------------------------------------------------------------


def test_retention_margins():
    assert retention_margin_days(90) == 22 and retention_margin_days(180) == 45
    assert retention_margin_days(30) == 7


def test_status_warns_before_evidence_falls_out_of_the_log_retention(tmp_path, entra_like):
    config = write_config(tmp_path, '''
        [[sources]]
        name = "aws-prod"
        type = "aws_iam"
        [[sources]]
        name = "aws-old"
        type = "aws_iam"
        [[sources]]
        name = "entra"
        type = "thirty_days"
        ''')
    store = tmp_path / "store"
    add_snapshot(store, "hr", "csv", dt.timedelta(hours=2))
    add_snapshot(store, "aws-prod", "aws_iam", dt.timedelta(days=80))   # 10 days left
    add_snapshot(store, "aws-old", "aws_iam", dt.timedelta(days=95))    # 5 days lost
    add_snapshot(store, "entra", "thirty_days", dt.timedelta(days=24))  # 6 days left
    add_snapshot(store, "entra", "thirty_days", dt.timedelta(hours=1), status="failed")

    report = status_report(load_config(config))
    sources = {s["name"]: s for s in report["sources"]}
    assert sources["hr"]["warnings"] == []
    assert round(sources["aws-prod"]["age_days"]) == 80
    [prod] = sources["aws-prod"]["warnings"]
    assert "80 days old" in prod and "keeps 90 days" in prod and "within 10 day(s)" in prod
    [old] = sources["aws-old"]["warnings"]
    assert "beyond AWS IAM's 90-day log retention" in old and "can no longer be recovered" in old
    entra = sources["entra"]["warnings"]
    assert any("keeps 30 days" in w and "within 6 day(s)" in w for w in entra)
    assert any("latest collection" in w and "failed" in w for w in entra)
    levels = {w["message"].split(":")[0]: w["level"] for w in report["warnings"]}
    assert levels["aws-old"] == "error" and levels["aws-prod"] == "warning"
    assert report["exit_code"] == 2

    out = invoke("status", "--config", config).output
    assert "ERROR: aws-old: the last good snapshot is 95 days old" in out
    assert "WARNING: aws-prod: the last good snapshot is 80 days old" in out
    assert "90 d" in out and "30 d" in out                       # retention column


def test_status_is_quiet_when_collection_is_current(tmp_path):
    config = write_config(tmp_path, '''
        [[sources]]
        name = "aws-prod"
        type = "aws_iam"
        ''')
    store = tmp_path / "store"
    add_snapshot(store, "hr", "csv", dt.timedelta(hours=3))
    add_snapshot(store, "aws-prod", "aws_iam", dt.timedelta(hours=20))
    result = invoke("status", "--config", config)
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output and "ERROR" not in result.output
    assert "recent runs: none recorded yet" in result.output


def test_status_of_a_new_installation_touches_nothing(tmp_path):
    config = write_config(tmp_path)
    result = invoke("status", "--config", config)
    assert result.exit_code == 2, result.output        # nothing collected yet
    assert "hr: no good snapshot yet" in result.output
    assert "not scheduled yet" in result.output
    assert not (tmp_path / "store").exists()


# --- status: schedule ---------------------------------------------------------------------------


def test_status_shows_next_scheduled_runs_from_the_job_store(tmp_path):
    config = write_config(tmp_path, '''
        [schedule]
        timezone = "Europe/Berlin"
        collect = "30 3 * * *"
        ''')
    assert Service(config, run_for=0.1).run() == 0
    data = json.loads(invoke("status", "--config", config, "--json").output)
    jobs = {j["kind"]: j for j in data["schedule"]["jobs"]}
    collect_next = dt.datetime.fromisoformat(jobs["collect"]["next_run"].replace("Z", "+00:00"))
    local = collect_next.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (3, 30) and collect_next > dt.datetime.now(UTC)
    assert jobs["pack"]["next_run"] and not jobs["collect"]["overdue"]
    out = invoke("status", "--config", config).output
    assert "30 3 * * *" in out and "UTC)" in out          # local time, then UTC
    assert "CET" in out or "CEST" in out
    assert str(tmp_path / "store" / "scheduler.sqlite") in out

    # the service is down and the collect run's time has passed: overdue
    db = sqlite3.connect(tmp_path / "store" / "scheduler.sqlite")
    past = (dt.datetime.now(UTC) - dt.timedelta(hours=5)).timestamp()
    db.execute("UPDATE apscheduler_jobs SET next_run_time = ? WHERE id = 'accessproof-collect'",
               (past,))
    db.commit()
    db.close()
    out = invoke("status", "--config", config).output
    assert "OVERDUE: runs once when the service starts" in out
    assert "WARNING: the collect run scheduled for" in out

    with service_lock(tmp_path / "store"):
        out = invoke("status", "--config", config).output
    assert "service    running (pid" in out and "OVERDUE" not in out


# --- logs and progress --------------------------------------------------------------------------


def test_logs_are_text_by_default_and_json_lines_on_request(tmp_path):
    config = write_config(tmp_path)
    text = CliRunner().invoke(cli, ["-v", "collect", "--config", str(config)])
    assert text.exit_code == 0, text.output
    lines = [line for line in text.stderr.splitlines() if line]
    assert lines and all(" INFO " in line or " WARNING " in line for line in lines)
    assert any("collect run #1 finished: ok (exit status 0)" in line for line in lines)

    structured = CliRunner().invoke(cli, ["-v", "--log-format", "json", "collect",
                                          "--config", str(config)])
    assert structured.exit_code == 0, structured.output
    records = [json.loads(line) for line in structured.stderr.splitlines() if line]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    finished = [r for r in records if r["message"].startswith("collect run #2 finished")]
    assert finished[0]["run_id"] == 2 and finished[0]["status"] == "ok"
    assert structured.stdout.startswith("hr ")            # results stay on stdout


def test_progress_bars_only_on_an_interactive_terminal(monkeypatch):
    from collector import logsetup

    class Terminal:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setenv("TERM", "xterm-256color")
    logsetup.setup_logging(0, "text")
    assert logsetup.interactive(Terminal(True)) is True
    assert logsetup.interactive(Terminal(False)) is False       # a pipe, a service, a journal
    monkeypatch.setenv("TERM", "dumb")
    assert logsetup.interactive(Terminal(True)) is False
    monkeypatch.setenv("TERM", "xterm-256color")
    logsetup.setup_logging(0, "json")
    assert logsetup.interactive(Terminal(True)) is False        # never mixed into JSON logs
    logsetup.setup_logging(0, "text")
    with logsetup.Progress(2, "collecting", enabled=False) as progress:
        progress.step("hr")
        progress.advance()                  # without a terminal: no bar, nothing printed
