"""Logging and progress for the command line and the service.

- Readable text lines by default, JSON lines (one object per record) with ``--log-format json``;
  both go to stderr, so stdout stays the command's result (the pack path last).
- Libraries whose debug output can carry credentials (botocore prints access key ids and session
  tokens; urllib3 prints request paths, and a webhook URL's path is its secret) never log below
  WARNING, whatever the tool's own level.
- Every line passes through a redactor that masks the values of the configured secrets and of
  the AWS credential variables, as a last line of defence: nothing is meant to log them at all.
- Progress bars (rich) only on an interactive terminal with text logs; a service or a pipe gets
  plain log records instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import threading
from typing import Any, Iterable, TextIO

QUIET_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer", "requests", "fontTools",
                   "weasyprint", "werkzeug", "msal", "google", "googleapiclient", "sqlalchemy",
                   "mail.log", "asyncio", "PIL", "matplotlib", "filelock")
# Environment variables that hold credentials of the default AWS chain (never configured by us).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
MIN_SECRET_LENGTH = 8          # shorter values would mask ordinary words
MASK = "***"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_state = {"format": "text"}

# LogRecord attributes that are not "extra" fields
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message",
                                                                             "asctime"}


# --- redaction --------------------------------------------------------------------------------

def add_secret(value: str | None) -> None:
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)
            stripped = value.strip()
            if len(stripped) >= MIN_SECRET_LENGTH:
                _secrets.add(stripped)


def redact(text: str) -> str:
    if not _secrets or not text:
        return text
    with _secrets_lock:
        values = sorted(_secrets, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def register_environment_secrets() -> None:
    for name in SECRET_ENV:
        add_secret(os.environ.get(name))


def _secret_objects(value: Any) -> Iterable[Any]:
    if hasattr(value, "reveal") and hasattr(value, "reference"):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_objects(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _secret_objects(item)


def register_config_secrets(config: Any) -> None:
    """Mask the values of every ``env:``/``file:`` secret of ``config`` in all log output.

    Values that cannot be read now are skipped (the integration reports that when it needs
    them)."""
    holders = [getattr(config, "notifications", {}), getattr(config, "pack", {}),
               getattr(getattr(config, "hr", None), "options", {}),
               getattr(getattr(config, "schedule", None), "database_url", None)]
    holders += [s.options for s in getattr(config, "sources", ())]
    for holder in holders:
        for secret in _secret_objects(holder):
            try:
                value = secret.reveal()
            except Exception:  # noqa: BLE001 - missing env var / unreadable file: nothing to mask
                continue
            add_secret(value)
            for line in value.splitlines():   # multi-line files (keys): mask every line too
                add_secret(line)


# --- formatting -------------------------------------------------------------------------------

class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname, "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) \
                    else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, ensure_ascii=False, default=str))


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a progress bar or a test runner may
    have replaced it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:   # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: int = 0, fmt: str = "text", *, minimum: int | None = None) -> None:
    """Configure the root logger: ``-v`` INFO, ``-vv`` DEBUG (``minimum`` raises the default,
    e.g. INFO for the service)."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    if minimum is not None:
        level = min(level, minimum)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StderrHandler):
            root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    _state["format"] = fmt
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # WeasyPrint's font warnings say nothing about the evidence; show them only when debugging.
    for name in ("weasyprint", "fontTools"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose > 1 else logging.ERROR)
    # APScheduler's per-second "looking for jobs" chatter only at -vv.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    register_environment_secrets()


def raise_level(minimum: int) -> None:
    """Make sure records at ``minimum`` (e.g. INFO for the service) are shown."""
    root = logging.getLogger()
    if root.level > minimum or root.level == logging.NOTSET:
        root.setLevel(minimum)


# --- progress ---------------------------------------------------------------------------------

def interactive(stream: TextIO | None = None) -> bool:
    """Progress bars only on a terminal, with text logs, and not for TERM=dumb."""
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return bool(tty) and _state["format"] == "text" and os.environ.get("TERM") != "dumb"


class Progress:
    """Steps of a run (one per source): a rich bar on a terminal, log records otherwise."""

    def __init__(self, total: int, description: str, *, enabled: bool | None = None,
                 log: logging.Logger | None = None):
        self.total, self.description = total, description
        self.enabled = interactive() if enabled is None else enabled
        self.log = log or logging.getLogger("accessproof")
        self._rich = None
        self._task = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)
            from rich.progress import Progress as RichProgress
            self._rich = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                                      BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=Console(file=sys.stderr), transient=True)
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total)
        return self

    def step(self, name: str) -> None:
        if self._rich is not None:
            self._rich.update(self._task, description=f"{self.description}: {name}")
        else:
            self.log.debug("%s: %s …", self.description, name)

    def advance(self) -> None:
        if self._rich is not None:
            self._rich.advance(self._task)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
            self._rich = None
