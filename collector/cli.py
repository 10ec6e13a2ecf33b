"""Command line (DESIGN §6). `pack`, `run` and `demo` print the pack directory as the last line.

Exit status: 0 all good; 1 exceptions found (pack written); 2 a source failed; 3 bad
configuration or input. Errors name the file, section, row or source at fault. Besides:
75 the store is busy (another run holds its run lock, or another `serve` runs on it);
128 + the signal number when a run was stopped by SIGTERM/SIGINT (nothing half-written is
published).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import click

from . import __version__
from . import logsetup
from .errors import AccessproofError

log = logging.getLogger("accessproof")


def _fail(exc: AccessproofError) -> None:
    click.echo(logsetup.redact(f"error: {exc}"), err=True)
    sys.exit(exc.exit_code)


def _interrupted_exit() -> None:
    from .service import STOP
    name = STOP.requested or "SIGINT"
    click.echo(f"stopped by {name}: the run was abandoned, nothing half-written was published",
               err=True)
    sys.exit(128 + int(getattr(signal.Signals, name, signal.SIGINT)))


def _load(config_path: Path):
    from .config import load_config
    config = load_config(config_path)
    logsetup.register_config_secrets(config)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="accessproof")
@click.option("-v", "--verbose", count=True, help="-v for progress, -vv for debug logs.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, envvar="ACCESSPROOF_LOG_FORMAT",
              help="Readable lines, or one JSON object per line (for log collectors). "
                   "Logs go to stderr.")
def cli(verbose: int, log_format: str) -> None:
    """Collect SOC 2 CC6.2 access evidence and render verifiable evidence packs."""
    logsetup.setup_logging(verbose, log_format)


config_option = click.option("--config", "config_path", required=True,
                             type=click.Path(dir_okay=False, path_type=Path),
                             help="Configuration file (TOML).")


# --------------------------------------------------------------------------------------------
# runs: collect, pack, run


def _runner(config):
    from .service import Runner
    return Runner(config, trigger="cli")


def _print_outcomes(outcomes) -> None:
    for out in outcomes:
        counts = ", ".join(f"{n} {t}" for t, n in out.records.items())
        line = f"{out.source:<20} {out.status:<9} {counts}"
        if out.error:
            line += f"  {out.error}"
        click.echo(logsetup.redact(line))


def _print_controls(evidence) -> None:
    for control in evidence.controls:
        click.echo(f"{control.id:<30} {control.status:<14} population {control.population_size:>7}"
                   f"  exceptions {len(control.exceptions)}")
    click.echo(f"pack status: {evidence.status}")


@cli.command()
@config_option
@click.option("--source", "sources", multiple=True, help="Collect only this source (repeatable).")
def collect(config_path: Path, sources: tuple[str, ...]) -> None:
    """One collection run: a snapshot per source."""
    from .service import STOP, Stopped
    try:
        config = _load(config_path)
        with STOP.installed():
            result = _runner(config).collect(only=list(sources) or None)
    except (Stopped, KeyboardInterrupt):
        _interrupted_exit()
    except AccessproofError as exc:
        _fail(exc)
    _print_outcomes(result.outcomes)
    sys.exit(result.exit_code)


@cli.command()
@config_option
@click.option("--period", required=True, help="2026-Q1, 2026-03 or 2026-01-01..2026-03-31 (UTC).")
@click.option("--sample-size", type=click.IntRange(min=0), default=None,
              help="Items sampled per population (default: [pack] sample_size, else a table "
                   "by population size).")
def pack(config_path: Path, period: str, sample_size: int | None) -> None:
    """Judge a period from the stored snapshots and write an evidence pack."""
    import dataclasses

    from .periods import parse_period
    from .service import STOP, Stopped
    try:
        config = _load(config_path)
        if sample_size is not None:
            config = dataclasses.replace(config, pack={**config.pack, "sample_size": sample_size})
        label = parse_period(period).label
        with STOP.installed():
            result = _runner(config).pack(label)
    except (Stopped, KeyboardInterrupt):
        _interrupted_exit()
    except AccessproofError as exc:
        _fail(exc)
    _print_controls(result.evidence)
    click.echo(str(result.pack_path))
    sys.exit(result.exit_code)


@cli.command()
@config_option
def run(config_path: Path) -> None:
    """Collect every source, then pack the current quarter (for cron users)."""
    from .periods import current_quarter
    from .service import STOP, Stopped
    from .store import utc_now
    try:
        config = _load(config_path)
        with STOP.installed():
            result = _runner(config).collect_and_pack(current_quarter(utc_now()).label)
    except (Stopped, KeyboardInterrupt):
        _interrupted_exit()
    except AccessproofError as exc:
        _fail(exc)
    _print_outcomes(result.outcomes)
    _print_controls(result.evidence)
    click.echo(str(result.pack_path))
    sys.exit(result.exit_code)


# --------------------------------------------------------------------------------------------
# the service


@cli.command()
@config_option
def serve(config_path: Path) -> None:
    """Scheduler service: collect and pack on the [schedule] cron times (APScheduler).

    Runs in the foreground (for systemd); SIGTERM stops it cleanly. A run missed while it was
    down runs once at start. Logs at INFO unless -v/-vv ask for more."""
    from .service import Service
    logsetup.raise_level(logging.INFO)
    try:
        service = Service(config_path)
        logsetup.register_config_secrets(service.config)
        code = service.run()
    except AccessproofError as exc:
        _fail(exc)
    sys.exit(code)


@cli.command()
@config_option
@click.option("--runs", "limit", type=click.IntRange(0, 1000), default=10, show_default=True,
              help="How many recent runs to list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path, limit: int, as_json: bool) -> None:
    """Recent runs, next scheduled runs, and the age of each source's last good snapshot.

    Exits 2 when a source needs attention (its latest collection failed, no recent good
    snapshot, or evidence close to falling out of the source's log retention)."""
    from .service import status_report
    try:
        config = _load(config_path)
        report = status_report(config, limit=limit)
    except AccessproofError as exc:
        _fail(exc)
    if as_json:
        click.echo(logsetup.redact(json.dumps(report, indent=2, default=str)))
    else:
        for line in _status_lines(report):
            click.echo(logsetup.redact(line))
    sys.exit(report["exit_code"])


def _when(iso: str | None, tz: str) -> str:
    if not iso:
        return "-"
    from zoneinfo import ZoneInfo
    at = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    utc = at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if tz == "UTC":
        return utc
    return f"{at.astimezone(ZoneInfo(tz)).strftime('%Y-%m-%d %H:%M %Z')} ({utc})"


def _status_lines(report: dict) -> list[str]:
    lines = [f"accessproof status: store {report['store']}"]
    service = report["service"]
    if service["running"]:
        lines.append(f"service    running ({service['holder']})")
    else:
        lines.append("service    not running")
    progress = report["run_in_progress"]
    lines.append(f"run        {'in progress: ' + progress if progress else 'none in progress'}")
    sched = report["schedule"]
    lines.append("")
    lines.append(f"schedule   timezone {sched['timezone']}; job store {sched['job_store']}")
    for job in sched["jobs"]:
        nxt = _when(job["next_run"], sched["timezone"]) if job["next_run"] else \
            "not scheduled yet (starts with `accessproof serve`)"
        note = "  OVERDUE: runs once when the service starts" if job["overdue"] else ""
        lines.append(f"  {job['kind']:<8} {job['cron']:<20} next {nxt}{note}")
    if sched.get("error"):
        lines.append(f"  job store not readable: {sched['error']}")
    lines.append("")
    lines.append(f"{'source':<20} {'type':<18} {'last good snapshot':<22} {'age':>8} "
                 f"{'retention':>9}  latest")
    for src in report["sources"]:
        age = f"{src['age_days']:.1f} d" if src["age_days"] is not None else "-"
        retention = f"{src['log_retention_days']} d" if src["log_retention_days"] else "-"
        latest = src["latest_status"] or "never collected"
        if src["latest_error"]:
            latest += f": {src['latest_error']}"
        last_good = src["last_good"][:19] + "Z" if src["last_good"] else "-"
        lines.append(f"{src['name']:<20} {src['type']:<18} {last_good:<22} "
                     f"{age:>8} {retention:>9}  {latest}")
    lines.append("")
    if report["runs"]:
        lines.append("recent runs")
        for run in report["runs"]:
            took = f"{run['duration_seconds']:.0f} s" if run["duration_seconds"] is not None \
                else "-"
            detail = []
            if run["sources"]:
                detail.append("; ".join(
                    f"{s['source']} {s['status']}" + (
                        f" ({', '.join(f'{n} {t}' for t, n in s['records'].items())})"
                        if s["records"] else "")
                    for s in run["sources"] if s["stage"] == "collect"))
            if run["pack_path"]:
                detail.append(f"{run['period']} {run['pack_status']}, {run['exceptions']} "
                              f"exception(s) -> {run['pack_path']}")
            if run["error"]:
                detail.append(f"error: {run['error']}")
            exit_code = "-" if run["exit_code"] is None else run["exit_code"]
            lines.append(f"  #{run['id']:<4} {run['kind']:<8} {run['trigger']:<9} "
                         f"{run['started_at']}  {took:>6}  {run['status']:<11} exit {exit_code}"
                         + (f"  {' | '.join(d for d in detail if d)}" if detail else ""))
    else:
        lines.append("recent runs: none recorded yet")
    if report["warnings"]:
        lines.append("")
        lines.extend(f"{w['level'].upper()}: {w['message']}" for w in report["warnings"])
    return lines


# --------------------------------------------------------------------------------------------
# check


def _check_source(integration_cls, name: str, source_config, now: dt.datetime) -> list[str]:
    """Problems of one source. Integrations without an access check of their own that only read
    local files (the HR export) are checked by a trial collection into a throwaway directory."""
    from .integration import CollectContext, Integration
    from .store import RawRecorder
    with tempfile.TemporaryDirectory(prefix="accessproof-check-") as tmp:
        raw = RawRecorder(Path(tmp) / "raw")
        ctx = CollectContext(name=name, config=source_config, now=now,
                             events_since=now - dt.timedelta(days=1), events_until=now, raw=raw,
                             log=log.getChild(f"check.{name}"), first_collection=False)
        try:
            local_only = all(p.system == "filesystem" for p in integration_cls.permissions)
            if integration_cls.check is Integration.check and local_only:
                integration_cls().collect(ctx)
                return []
            return list(integration_cls().check(ctx))
        finally:
            raw.close()


def _store_problem(store: Path) -> str | None:
    probe = store
    while not probe.exists():
        if probe.parent == probe:
            return f"no existing parent directory for {store}"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return (f"{probe} is not writable by this user"
                + ("" if probe == store else f" (the store {store} would be created there)"))
    return None


@cli.command()
@config_option
@click.option("--source", "sources", multiple=True, help="Check only this source (repeatable).")
@click.option("--notify", "send_test", is_flag=True,
              help="Also send a test notification on every configured channel.")
def check(config_path: Path, sources: tuple[str, ...], send_test: bool) -> None:
    """Validate the configuration, then test each source's access with cheap read calls.

    Exits 3 when the configuration is wrong, 2 when a source lacks access (each missing
    permission is named), 0 when everything is in order. Writes nothing to the store."""
    from .config import validate_sources
    from .notify import Notice, Notifier
    from .registry import get_integration
    from .service import check_jobstore, jobstore_label, schedule_triggers
    from .store import utc_now
    try:
        config = _load(config_path)
        validate_sources(config)
        schedule_triggers(config)
        notifier = Notifier.from_config(config)
        check_jobstore(config)
        known = ["hr"] + [s.name for s in config.sources]
        for name in sources:
            if name not in known:
                from .errors import ConfigError
                raise ConfigError(f"no source named '{name}' (configured: "
                                  f"{', '.join(sorted(known))})", file=str(config.file),
                                  section="sources")
    except AccessproofError as exc:
        click.echo(logsetup.redact(f"{'configuration':<20} FAIL  {exc}"))
        sys.exit(exc.exit_code if exc.exit_code == 3 else 3)
    channels = ", ".join(notifier.settings.channels()) or "none"
    click.echo(f"{'configuration':<20} ok    {config.file} ({len(config.sources)} source(s); "
               f"schedule {config.schedule.timezone}, job store {jobstore_label(config)}; "
               f"notifications: {channels})")
    code = 0
    problem = _store_problem(config.store_path)
    if problem:
        click.echo(f"{'store':<20} FAIL  {problem}")
        code = 3
    else:
        click.echo(f"{'store':<20} ok    {config.store_path}")

    now = utc_now()
    entries = [("hr", config.hr.type, config.hr)] + [(s.name, s.type, s) for s in config.sources]
    failing = 0
    for name, type_name, source_config in entries:
        if sources and name not in sources:
            continue
        integration_cls = get_integration(type_name)
        log.info("checking %s (%s)", name, type_name)
        try:
            problems = _check_source(integration_cls, name, source_config, now)
        except AccessproofError as exc:
            problems = [str(exc)]
            code = max(code, 3 if exc.exit_code == 3 else 2)
        except Exception as exc:  # noqa: BLE001 - reported as this source's problem
            log.debug("check of %s failed", name, exc_info=True)
            problems = [f"unexpected {type(exc).__name__}: {exc}"]
        if problems:
            failing += 1
            code = max(code, 2)
            click.echo(f"{name:<20} FAIL  {type_name}")
            for text in problems:
                click.echo(logsetup.redact(f"    - {text}"))
        else:
            click.echo(f"{name:<20} ok    {type_name}")

    if send_test:
        if not notifier.enabled:
            click.echo(f"{'notifications':<20} FAIL  --notify: no channel in [notifications]")
            code = max(code, 3)
        else:
            failures = notifier.send(Notice(
                subject="test notification",
                text=f"accessproof check --notify: notifications from {config.file} reach "
                     "you. Packs and failed runs are reported here."))
            for text in failures:
                click.echo(logsetup.redact(f"{'notifications':<20} FAIL  {text}"))
            if failures:
                code = max(code, 2)
            else:
                click.echo(f"{'notifications':<20} ok    test message sent ({channels})")
    click.echo("all checks passed" if code == 0 else
               f"check FAILED: {failing} source(s) with problems" if code == 2 and failing else
               "check FAILED")
    sys.exit(code)


# --------------------------------------------------------------------------------------------
# verify, permissions, demo


@cli.command()
@click.argument("pack_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--require-chain", is_flag=True,
              help="Fail when the previous pack of the chain cannot be found.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The Ed25519 public key (PEM) the pack must be signed with.")
@click.option("--tsa-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Your own PEM root(s) for the RFC 3161 timestamp, instead of the pack's.")
def verify(pack_dir: Path, require_chain: bool, public_key: Path | None,
           tsa_ca: Path | None) -> None:
    """Recompute every hash of a pack; check its chain, signatures and timestamp."""
    from reports.manifest import verify_ok, verify_pack
    checks = verify_pack(pack_dir, require_chain=require_chain, public_key=public_key,
                         tsa_roots=tsa_ca)
    for check in checks:
        click.echo(f"{'ok  ' if check.ok else 'FAIL'} {check.name:<13} {check.detail}")
    ok = verify_ok(checks)
    click.echo("verified" if ok else "verification FAILED")
    sys.exit(0 if ok else 1)


def _conditional(perm) -> bool:
    """A grant needed only with some option ("only when assume_role_arn is set ...")."""
    return perm.why.strip().lower().startswith("only when")


def aws_policy(actions: list[str], sid: str, resource: str = "*") -> dict:
    return {"Version": "2012-10-17",
            "Statement": [{"Sid": sid, "Effect": "Allow", "Action": sorted(set(actions)),
                           "Resource": resource}]}


_SYSTEM_TITLES = [
    ("aws-iam-policy", "AWS IAM policy document (attach to the collecting principal)"),
    ("google-oauth-scope", "Google OAuth scopes (Admin console > Security > API controls > "
                           "Domain-wide delegation; paste the line below)"),
    ("graph-application", "Microsoft Graph application permissions (Entra admin center > App "
                           "registrations > API permissions > Application permissions; then "
                           "grant admin consent)"),
    ("jira", "Jira roles and permissions (grant them to the account the API token belongs to)"),
    ("servicenow", "ServiceNow roles (grant them to the integration user)"),
    ("filesystem", "File system access (the service user)"),
]


def _system_title(system: str) -> str:
    for prefix, title in _SYSTEM_TITLES:
        if system.startswith(prefix):
            return title
    return system


def _permission_blocks(integration) -> list[str]:
    """The declared permissions grouped by where they are granted, in the form each system
    takes them."""
    lines: list[str] = []
    groups: dict[str, list] = {}
    for perm in integration.permissions:
        groups.setdefault(perm.system, []).append(perm)
    for system, perms in groups.items():
        lines.append(f"## {_system_title(system)}")
        required = [p for p in perms if not _conditional(p)]
        optional = [p for p in perms if _conditional(p)]
        if system == "aws-iam-policy":
            sid = "Accessproof" + "".join(w.capitalize() for w in
                                         integration.type.replace("-", "_").split("_")) + "Read"
            lines += json.dumps(aws_policy([p.name for p in required], sid), indent=2) \
                .splitlines()
            for perm in optional:
                if perm.name == "sts:AssumeRole":
                    lines.append("## Only when assume_role_arn is set: the base principal may "
                                 "assume the role (whose trust policy must name it); the "
                                 "policy above goes on the role")
                    document = aws_policy([perm.name], "AccessproofAssumeReadRole",
                                          "arn:aws:iam::<account-id>:role/<role-name>")
                else:
                    lines.append(f"## Optional ({perm.name}): {perm.why}")
                    document = aws_policy([perm.name], "AccessproofOptional")
                lines += json.dumps(document, indent=2).splitlines()
        elif system == "google-oauth-scope":
            lines.append(",".join(p.name for p in required + optional))
        else:
            lines.extend(f"  {p.name}" for p in required + optional)
    return lines


@cli.command()
@click.option("--source", "source_type", help="Only this integration type.")
@click.option("--aws-policy", "aws_policy_only", is_flag=True,
              help="Print only the AWS IAM policy document (JSON), e.g. for "
                   "`aws iam put-role-policy --policy-document file://policy.json`.")
def permissions(source_type: str | None, aws_policy_only: bool) -> None:
    """The least privilege each integration needs, from what integrations declare."""
    from .registry import available, get_integration
    try:
        types = [source_type] if source_type else available()
        integrations = [get_integration(name) for name in types]
    except AccessproofError as exc:
        _fail(exc)
    if aws_policy_only:
        actions = [p.name for i in integrations for p in i.permissions
                   if p.system == "aws-iam-policy" and not _conditional(p)]
        if not actions:
            click.echo("error: no AWS IAM permissions declared by "
                       + ", ".join(types), err=True)
            sys.exit(3)
        click.echo(json.dumps(aws_policy(actions, "AccessproofRead"), indent=2))
        return
    for name, integration in zip(types, integrations):
        click.echo(f"# {name}: {integration.title}")
        for line in _permission_blocks(integration):
            click.echo(line)
        click.echo("## Each grant and why")
        for perm in integration.permissions:
            click.echo(f"{perm.system:<20} {perm.name:<40} {perm.why}")
        click.echo("")


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-out"), show_default=True,
              help="Directory for the demo's configuration, store and pack.")
def demo(out_dir: Path) -> None:
    """A synthetic organisation served by local emulators, through the real collect → pack."""
    try:
        from .demo import run_demo
    except ImportError as exc:  # moto/flask are the demo extra
        click.echo(f"error: the demo needs its emulators: pip install 'accessproof[demo]' ({exc})",
                   err=True)
        sys.exit(3)
    try:
        path, code = run_demo(out_dir, echo=lambda m: click.echo(m, err=True))
    except AccessproofError as exc:
        _fail(exc)
    click.echo(str(path))
    # The demo plants exceptions on purpose; it succeeded when the pack is whole.
    sys.exit(0 if code in (0, 1) else code)


def main() -> None:
    cli(prog_name="accessproof")


if __name__ == "__main__":
    main()
