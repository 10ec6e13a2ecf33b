"""The service-account allowlist (DESIGN §9): account, source, owner, reason, expiry."""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError


@dataclass(frozen=True)
class AllowlistEntry:
    source: str        # a source name, or a type matching every source of that type
    account: str       # the source's login, compared case-insensitively
    owner: str
    reason: str
    expires: dt.date

    def matches(self, source_name: str, source_type: str, login: str) -> bool:
        return (self.source in (source_name, source_type)
                and self.account.strip().lower() == str(login).strip().lower())

    def active_on(self, day: dt.date) -> bool:
        """From the expiry day on, the entry no longer excludes."""
        return day < self.expires


def load_allowlist(path: Path | None) -> list[AllowlistEntry]:
    if path is None:
        return []
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise InputError("service-account allowlist not found", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML: {exc}", file=str(path)) from None
    entries = []
    for number, raw in enumerate(data.get("accounts", []), start=1):
        where = f"[[accounts]] #{number}"
        for key in ("source", "account", "owner", "reason", "expires"):
            if key not in raw:
                raise InputError(f"{where}: '{key}' is required (owner, reason and expiry make "
                                 "an exclusion reviewable)", file=str(path))
        if not isinstance(raw["expires"], dt.date) or isinstance(raw["expires"], dt.datetime):
            raise InputError(f"{where}: 'expires' must be a TOML date such as 2027-06-30",
                             file=str(path))
        entries.append(AllowlistEntry(str(raw["source"]), str(raw["account"]),
                                      str(raw["owner"]), str(raw["reason"]), raw["expires"]))
    return entries
