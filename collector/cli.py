"""Command line (DESIGN §6). `pack`, `run` and `demo` print the pack directory as the last line.

Exit status: 0 all good; 1 exceptions found (pack written); 2 a source failed; 3 bad
configuration or input. Errors name the file, section, row or source at fault.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from . import __version__
from .errors import AccessproofError

log = logging.getLogger("accessproof")

# Libraries whose debug output can carry credentials (botocore prints access key ids and
# session tokens) never log below INFO, whatever the tool's own level.
_QUIET_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer", "fontTools", "weasyprint",
                    "werkzeug", "msal", "google", "googleapiclient")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # WeasyPrint's font warnings say nothing about the evidence; show them only when debugging.
    for name in ("weasyprint", "fontTools"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose > 1 else logging.ERROR)


def _fail(exc: AccessproofError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="accessproof")
@click.option("-v", "--verbose", count=True, help="-v for progress, -vv for debug logs.")
def cli(verbose: int) -> None:
    """Collect SOC 2 CC6.2 access evidence and render verifiable evidence packs."""
    _setup_logging(verbose)


config_option = click.option("--config", "config_path", required=True,
                             type=click.Path(dir_okay=False, path_type=Path),
                             help="Configuration file (TOML).")


@cli.command()
@config_option
@click.option("--source", "sources", multiple=True, help="Collect only this source (repeatable).")
def collect(config_path: Path, sources: tuple[str, ...]) -> None:
    """One collection run: a snapshot per source."""
    from .config import load_config
    from .pipeline import collect as run_collect
    try:
        config = load_config(config_path)
        outcomes = run_collect(config, only=list(sources) or None,
                               progress=lambda name: click.echo(f"collecting {name} …", err=True))
    except AccessproofError as exc:
        _fail(exc)
    for out in outcomes:
        counts = ", ".join(f"{n} {t}" for t, n in out.records.items())
        line = f"{out.source:<20} {out.status:<9} {counts}"
        if out.error:
            line += f"  {out.error}"
        click.echo(line)
    sys.exit(max((o.exit_code for o in outcomes), default=0))


def _pack(config, period_label: str) -> tuple[Path, int]:
    from .periods import parse_period
    from .pipeline import build_evidence
    from reports.pack import write_pack
    period = parse_period(period_label)
    evidence = build_evidence(config, period)
    path = write_pack(evidence, config.store_path)
    for control in evidence.controls:
        click.echo(f"{control.id:<30} {control.status:<14} population {control.population_size:>7}"
                   f"  exceptions {len(control.exceptions)}")
    click.echo(f"pack status: {evidence.status}")
    return path, evidence.exit_code()


@cli.command()
@config_option
@click.option("--period", required=True, help="2026-Q1, 2026-03 or 2026-01-01..2026-03-31 (UTC).")
def pack(config_path: Path, period: str) -> None:
    """Judge a period from the stored snapshots and write an evidence pack."""
    from .config import load_config
    try:
        path, code = _pack(load_config(config_path), period)
    except AccessproofError as exc:
        _fail(exc)
    click.echo(str(path))
    sys.exit(code)


@cli.command()
@config_option
def run(config_path: Path) -> None:
    """Collect every source, then pack the current quarter (for cron users)."""
    from .config import load_config
    from .periods import current_quarter
    from .pipeline import collect as run_collect
    from .store import utc_now
    try:
        config = load_config(config_path)
        outcomes = run_collect(config)
        path, code = _pack(config, current_quarter(utc_now()).label)
    except AccessproofError as exc:
        _fail(exc)
    click.echo(str(path))
    sys.exit(max([code] + [o.exit_code for o in outcomes]))


@cli.command()
@click.argument("pack_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--require-chain", is_flag=True,
              help="Fail when the previous pack of the chain cannot be found.")
def verify(pack_dir: Path, require_chain: bool) -> None:
    """Recompute every hash of a pack and check its chain."""
    from reports.manifest import verify_ok, verify_pack
    checks = verify_pack(pack_dir, require_chain=require_chain)
    for check in checks:
        click.echo(f"{'ok  ' if check.ok else 'FAIL'} {check.name:<10} {check.detail}")
    ok = verify_ok(checks)
    click.echo("verified" if ok else "verification FAILED")
    sys.exit(0 if ok else 1)


@cli.command()
@click.option("--source", "source_type", help="Only this integration type.")
def permissions(source_type: str | None) -> None:
    """The least privilege each integration needs, from what integrations declare."""
    from .registry import available, get_integration
    try:
        types = [source_type] if source_type else available()
        for name in types:
            integration = get_integration(name)
            click.echo(f"# {name}: {integration.title}")
            for perm in integration.permissions:
                click.echo(f"{perm.system:<20} {perm.name:<40} {perm.why}")
            click.echo("")
    except AccessproofError as exc:
        _fail(exc)


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
