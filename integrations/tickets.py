"""Shared pieces of the ticketing integrations (Jira Service Management, ServiceNow).

What lives here and why: both integrations read the same kinds of options (a base URL, a kind
mapping, a field mapping, secrets, a backfill), extract the same field shapes (strings, select
objects, user objects, arrays), decide a ticket's approval status by the same rule, and produce the
same canonical ``tickets`` table (DESIGN §3). None of it judges: whether an approval came in time
or from the subject is the controls' business.

Approval rule (both systems): an outstanding approval makes the ticket ``pending``; otherwise the
*latest* decision decides — ``approved`` (its time and approver become ``approved_at`` and
``approver_email``) or ``rejected``; no decision at all is ``pending``. ``approved_at`` is set only
on approved tickets, so a partly approved ticket never looks approved.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import pandas as pd
import requests

from collector.config import Secret, SourceConfig
from collector.errors import ConfigError, SourceError
from collector.http import get_json, redact
from collector.integration import CollectContext
from collector.schema import SCHEMAS, conform

KINDS = ("access_request", "offboarding", "role_change")
STATUSES = ("approved", "rejected", "pending")
DEFAULT_BACKFILL_DAYS = 400
MAX_BACKFILL_DAYS = 3650


# --- options ------------------------------------------------------------------------------------

def base_url(source: SourceConfig, key: str = "url") -> str:
    """An http(s) base URL without a trailing slash. Plain http only to a loopback host:
    basic credentials must not cross a network in the clear."""
    value = source.options.get(key)
    if not isinstance(value, str) or not value.strip():
        raise source.error(key, "must be the base URL, e.g. https://corp.atlassian.net")
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise source.error(key, f"must be an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise source.error(key, "must not carry a query, fragment or credentials")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise source.error(key, "must use https:// (plain http:// only for 127.0.0.1/localhost)")
    return value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret(source: SourceConfig, key: str, *, required: bool = True) -> Secret | None:
    """A secret option: only an ``env:``/``file:`` reference is accepted (the config loader turns
    those into ``Secret``; a bare ``token = "..."`` would otherwise slip through)."""
    value = source.options.get(key)
    if value in (None, ""):
        if required:
            raise source.error(key, "is required (an 'env:NAME' or 'file:PATH' reference)")
        return None
    if not isinstance(value, Secret):
        raise source.error(key, "must be an 'env:NAME' or 'file:PATH' reference (secrets are "
                                "never written in the configuration file)")
    return value


def plain_or_secret(source: SourceConfig, key: str, *, required: bool = True) \
        -> str | Secret | None:
    """A non-secret identity (an email, a user name) given literally or as a reference."""
    value = source.options.get(key)
    if value in (None, ""):
        if required:
            raise source.error(key, "is required")
        return None
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str) or not value.strip():
        raise source.error(key, "must be a non-empty string")
    return value.strip()


def reveal(value: str | Secret | None) -> str | None:
    return value.reveal() if isinstance(value, Secret) else value


def whole_number(source: SourceConfig, key: str, default: int, low: int, high: int) -> int:
    value = source.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise source.error(key, f"must be a whole number from {low} to {high}, got {value!r}")
    return value


def kinds_mapping(source: SourceConfig, what: str) -> dict[str, str]:
    """``[sources.kinds]``: a name (or id) → ticket kind; compared case-insensitively."""
    value = source.options.get("kinds")
    if not isinstance(value, dict) or not value:
        raise source.error("kinds", f"must be a table mapping {what} to a ticket kind "
                                    f"({', '.join(KINDS)})")
    out: dict[str, str] = {}
    for name, kind in value.items():
        if not isinstance(kind, str) or kind not in KINDS:
            raise ConfigError(f"must be one of {', '.join(KINDS)}, got {kind!r}",
                              file=source.file, section=f"{source.section}.kinds", key=name)
        if not str(name).strip():
            raise ConfigError("an empty name cannot match anything", file=source.file,
                              section=f"{source.section}.kinds", key=name)
        folded = str(name).strip().casefold()
        if out.get(folded, kind) != kind:
            raise ConfigError("is mapped twice (names compare case-insensitively)",
                              file=source.file, section=f"{source.section}.kinds", key=name)
        out[folded] = kind
    return out


def fields_mapping(source: SourceConfig, known: dict[str, str], required: Iterable[str],
                   defaults: dict[str, str] | None = None) -> dict[str, str]:
    """``[sources.fields]``: canonical column → the source's field name."""
    value = source.options.get("fields", {})
    if not isinstance(value, dict):
        raise source.error("fields", "must be a table ([sources.fields])")
    out = dict(defaults or {})
    for key, field_name in value.items():
        if key not in known:
            raise ConfigError(f"unknown field (known: {', '.join(sorted(known))})",
                              file=source.file, section=f"{source.section}.fields", key=key)
        if not isinstance(field_name, str) or not field_name.strip() or "," in field_name:
            raise ConfigError("must name one field", file=source.file,
                              section=f"{source.section}.fields", key=key)
        out[key] = field_name.strip()
    for key in required:
        if key not in out:
            raise ConfigError(f"is required ({known[key]})", file=source.file,
                              section=f"{source.section}.fields", key=key)
    return out


def ca_bundle(source: SourceConfig) -> str | None:
    """``ca_bundle``: a PEM file, relative paths from the configuration file's directory. Its
    existence is checked when collecting (``existing_ca_bundle``), not when validating."""
    value = source.options.get("ca_bundle")
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise source.error("ca_bundle", "must be the path of a PEM file")
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = Path(source.file).resolve().parent / path
    return str(path)


def existing_ca_bundle(source: SourceConfig, path: str | None) -> str | None:
    if path is not None and not Path(path).is_file():
        raise source.error("ca_bundle", f"file not found: {path}")
    return path


# --- the collection window ----------------------------------------------------------------------

def ticket_window(ctx: CollectContext, backfill_days: int) -> tuple[dt.datetime, dt.datetime]:
    """Tickets updated in [since, until] are pulled.

    Ticketing systems keep tickets for ever (``log_retention_days = None``), so the first
    collection reaches back ``backfill_days`` (default 400: a year-long audit period plus a
    quarter of lead time, since access is often requested well before it is granted); later ones
    start where the pipeline says (the previous good collection, with overlap). A window that the
    pipeline leaves empty (no retention, no previous window) is treated as a first collection.
    """
    until = ctx.events_until
    if ctx.first_collection or ctx.events_since >= until:
        since = ctx.now - dt.timedelta(days=backfill_days)
    else:
        since = ctx.events_since
    return since, until


# --- field shapes -------------------------------------------------------------------------------

def field_text(value: Any) -> str | None:
    """A custom field's value as text: a string; a select option's ``value``; a user's
    ``emailAddress`` (None when the user's email is hidden — never the display name); a
    reference's ``value``; the first usable element of an array."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        for item in value:
            text = field_text(item)
            if text is not None:
                return text
        return None
    if isinstance(value, dict):
        if "emailAddress" in value or "accountId" in value:     # a Jira user
            return field_text(value.get("emailAddress"))
        for key in ("value", "name"):                           # select option / reference
            if key in value:
                return field_text(value[key])
    return None


def parse_time(value: Any) -> pd.Timestamp | None:
    """A UTC timestamp from an ISO 8601 string (``+0000`` offsets included), epoch
    milliseconds, or a ServiceNow ``YYYY-MM-DD HH:MM:SS`` (UTC with display_value=false)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return pd.Timestamp(value, unit="ms", tz="UTC")
    ts = pd.Timestamp(str(value).strip())
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


# --- approvals ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """One approval record reduced to what decides the ticket."""

    state: str                       # "approved" | "rejected" | "pending" | "ignored"
    at: pd.Timestamp | None          # when the decision was recorded
    approver_email: str | None


def decide(decisions: Iterable[Decision]) -> tuple[str, pd.Timestamp | None, str | None]:
    """(status, approved_at, approver_email) by the rule in the module docstring."""
    decisions = [d for d in decisions if d.state != "ignored"]
    if any(d.state == "pending" for d in decisions):
        return "pending", None, None
    decided = [d for d in decisions if d.state in ("approved", "rejected")]
    if not decided:
        return "pending", None, None
    floor = pd.Timestamp.min.tz_localize("UTC")
    last = max(decided, key=lambda d: (d.at if d.at is not None else floor,
                                       d.state == "rejected"))
    if last.state == "rejected":
        return "rejected", None, None
    return "approved", last.at, last.approver_email


# --- HTTP and recording -------------------------------------------------------------------------

class Fetcher:
    """``collector.http.get_json`` (the one retry policy) plus what it does not return: the final
    response's status and headers (ServiceNow's ``Link``, a 404 from Jira's approvals)."""

    def __init__(self, session: requests.Session, ctx: CollectContext, *, auth_hint: str):
        self.session, self.ctx, self.auth_hint = session, ctx, auth_hint
        self.last: requests.Response | None = None
        self.count = 0

    def _hook(self, response, *args, **kwargs):
        self.last = response
        return response

    def json(self, url: str, *, what: str, permission_hint: str = "", method: str = "GET",
             **kwargs) -> dict:
        self.last = None
        self.count += 1
        body = get_json(self.session, url, source=self.ctx.name, what=what, method=method,
                        auth_hint=self.auth_hint, permission_hint=permission_hint,
                        hooks={"response": self._hook}, **kwargs)
        if not isinstance(body, dict):
            raise SourceError(self.ctx.name, f"{what} ({redact(url)}): expected a JSON object, "
                                             f"got {type(body).__name__}")
        return body

    @property
    def last_status(self) -> int | None:
        return None if self.last is None else self.last.status_code


def record(ctx: CollectContext, request: str, *, endpoint: str, call: dict, body: Any,
           records: int, parameters: dict | None = None, headers: dict | None = None) -> None:
    """Record one raw page with the request that produced it (key, offset, page token): the
    recorder keeps a request's parameters once, but an auditor re-performing the extract needs
    every page's."""
    page = {"request": call, "response": body}
    if headers:
        page["headers"] = headers
    ctx.raw.page(request, page, endpoint=endpoint, parameters=parameters, records=records)


def same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


# --- the table ----------------------------------------------------------------------------------

def tickets_frame(rows: list[dict[str, Any]], *, source: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(SCHEMAS["tickets"]))
    return conform(frame, "tickets", source=source)

