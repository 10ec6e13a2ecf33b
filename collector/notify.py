"""Notifications after a pack or a failed run (optional ``[notifications]`` in the config).

Two channels, either or both:

- a Slack-compatible webhook: ``POST`` of ``{"text": "..."}`` as JSON to ``webhook_url``
  (a webhook URL is a bearer secret: give it as ``env:NAME`` or ``file:PATH``);
- an e-mail over SMTP (``smtp_host`` ...; ``smtp_password`` only as ``env:``/``file:``).

A failure to notify is logged (without the webhook URL or any credential) and never fails the
run: the evidence is what matters, the message is a courtesy.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from .config import Config, Secret
from .errors import ConfigError

log = logging.getLogger("accessproof.notify")

SECTION = "notifications"
KEYS = {
    "webhook_url": "Slack-compatible incoming webhook (env:NAME or file:PATH recommended)",
    "smtp_host": "SMTP server host name; e-mail is sent when set",
    "smtp_port": "SMTP port (default 465 with smtp_ssl, else 587 with smtp_starttls, else 25)",
    "smtp_starttls": "upgrade the connection with STARTTLS (default true)",
    "smtp_ssl": "implicit TLS from the first byte, usually port 465 (default false)",
    "smtp_username": "SMTP login (optional)",
    "smtp_password": "SMTP password: env:NAME or file:PATH only",
    "mail_from": "sender address",
    "mail_to": "recipient address or list of addresses",
    "subject_prefix": "prefix of the e-mail subject (default '[accessproof]')",
    "timeout_seconds": "network timeout per attempt (default 30)",
    "ca_bundle": "CA certificates (PEM) to verify the webhook and SMTP servers (optional)",
}


@dataclass(frozen=True)
class NotifySettings:
    webhook_url: Secret | str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_starttls: bool = True
    smtp_ssl: bool = False
    smtp_username: Secret | str | None = None
    smtp_password: Secret | None = None
    mail_from: str | None = None
    mail_to: tuple[str, ...] = ()
    subject_prefix: str = "[accessproof]"
    timeout_seconds: float = 30.0
    ca_bundle: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url or self.smtp_host)

    @property
    def port(self) -> int:
        if self.smtp_port:
            return self.smtp_port
        return 465 if self.smtp_ssl else 587 if self.smtp_starttls else 25

    def channels(self) -> list[str]:
        return (["webhook"] if self.webhook_url else []) + (["e-mail"] if self.smtp_host else [])


def load_notifications(config: Config) -> NotifySettings:
    """Validate ``[notifications]``; raises ``ConfigError`` naming the key."""
    raw: dict[str, Any] = dict(config.notifications or {})
    file = str(config.file)

    def error(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=file, section=SECTION, key=key)

    for key in raw:
        if key not in KEYS:
            raise error(key, f"unknown key (known: {', '.join(KEYS)})")
    values: dict[str, Any] = {}

    def text(key: str, *, secret_ok: bool = True) -> None:
        if key not in raw:
            return
        value = raw[key]
        if isinstance(value, Secret):
            if not secret_ok:
                raise error(key, "must be written in the file, not as env:/file:")
            values[key] = value
        elif isinstance(value, str) and value.strip():
            values[key] = value.strip()
        else:
            raise error(key, "must be a non-empty string")

    for key in ("webhook_url", "smtp_username", "smtp_password"):
        text(key)
    for key in ("smtp_host", "mail_from", "subject_prefix"):
        text(key, secret_ok=False)
    if isinstance(values.get("webhook_url"), str):
        _check_url(values["webhook_url"], error)
    if "smtp_password" in values and not isinstance(values["smtp_password"], Secret):
        raise error("smtp_password", "must be env:NAME or file:PATH")
    for key in ("smtp_starttls", "smtp_ssl"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise error(key, "must be true or false")
            values[key] = raw[key]
    if values.get("smtp_ssl") and values.get("smtp_starttls"):
        raise error("smtp_starttls", "cannot be combined with smtp_ssl (implicit TLS)")
    if values.get("smtp_ssl") and "smtp_starttls" not in raw:
        values["smtp_starttls"] = False
    if "smtp_port" in raw:
        port = raw["smtp_port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise error("smtp_port", "must be a port number from 1 to 65535")
        values["smtp_port"] = port
    if "timeout_seconds" in raw:
        timeout = raw["timeout_seconds"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise error("timeout_seconds", "must be a number of seconds > 0")
        values["timeout_seconds"] = float(timeout)
    if "mail_to" in raw:
        to = raw["mail_to"]
        to = [to] if isinstance(to, str) else to
        if not isinstance(to, list) or not to or not all(
                isinstance(a, str) and "@" in a.strip() for a in to):
            raise error("mail_to", "must be an e-mail address or a non-empty list of them")
        values["mail_to"] = tuple(a.strip() for a in to)
    if "mail_from" in values and "@" not in values["mail_from"]:
        raise error("mail_from", "must be an e-mail address")
    if "ca_bundle" in raw:
        if not isinstance(raw["ca_bundle"], str) or not raw["ca_bundle"]:
            raise error("ca_bundle", "must be a path")
        path = Path(os.path.expanduser(raw["ca_bundle"]))
        values["ca_bundle"] = path if path.is_absolute() else config.base_dir / path

    mail_keys = [k for k in ("smtp_port", "smtp_username", "smtp_password", "mail_from",
                             "mail_to") if k in raw]
    if "smtp_host" in values:
        for key in ("mail_from", "mail_to"):
            if key not in values:
                raise error(key, "is required when smtp_host is set")
    elif mail_keys:
        raise error(mail_keys[0], "has no effect without smtp_host")
    if ("smtp_password" in values) != ("smtp_username" in values):
        raise error("smtp_password" if "smtp_username" in values else "smtp_username",
                    "smtp_username and smtp_password go together")
    return NotifySettings(**values)


def _check_url(url: str, error) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise error("webhook_url", "must be an http:// or https:// URL")


def _reveal(value: Secret | str | None) -> str | None:
    return value.reveal() if isinstance(value, Secret) else value


def _where(url: str) -> str:
    """Host and port of a URL: safe to log (the path and query of a webhook are its secret)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


@dataclass
class Notice:
    subject: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)


class Notifier:
    """Sends a ``Notice`` on every configured channel; returns the failures, never raises."""

    def __init__(self, settings: NotifySettings | None):
        self.settings = settings or NotifySettings()

    @classmethod
    def from_config(cls, config: Config) -> "Notifier":
        return cls(load_notifications(config))

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def send(self, notice: Notice) -> list[str]:
        failures = []
        if self.settings.webhook_url:
            failures += self._attempt("webhook", self._webhook, notice)
        if self.settings.smtp_host:
            failures += self._attempt("e-mail", self._mail, notice)
        return failures

    def _attempt(self, channel: str, send, notice: Notice) -> list[str]:
        try:
            send(notice)
        except Exception as exc:  # noqa: BLE001 - a notification never fails a run
            message = f"{channel} notification failed: {self._describe(exc)}"
            log.warning("%s", message)
            return [message]
        log.info("%s notification sent: %s", channel, notice.subject)
        return []

    def _describe(self, exc: Exception) -> str:
        """An error without the webhook URL or credentials (exception texts may contain the
        URL: requests puts it into connection errors)."""
        import requests
        settings = self.settings
        if isinstance(exc, _HTTPStatus):
            return str(exc)
        if isinstance(exc, requests.RequestException):
            reason = _os_reason(exc)
            return type(exc).__name__ + (f" ({reason})" if reason else "")
        text = f"{type(exc).__name__}: {exc}"
        for secret in (settings.webhook_url, settings.smtp_password):
            try:
                value = _reveal(secret)
            except Exception:  # noqa: BLE001
                value = None
            if value:
                text = text.replace(value, "***")
        return text

    # --- channels -----------------------------------------------------------------------------
    def _verify(self) -> Any:
        return str(self.settings.ca_bundle) if self.settings.ca_bundle else True

    def _webhook(self, notice: Notice) -> None:
        import requests
        url = _reveal(self.settings.webhook_url)
        _check_url(url, lambda key, message: ValueError(f"{key} {message}"))
        where = _where(url)
        log.debug("webhook notification to %s", where)
        # errors propagate to _attempt, which describes them without the URL
        response = requests.post(url, data=json.dumps({"text": notice.text}),
                                 headers={"Content-Type": "application/json"},
                                 timeout=self.settings.timeout_seconds,
                                 allow_redirects=False, verify=self._verify())
        if not 200 <= response.status_code < 300:
            raise _HTTPStatus(f"HTTP {response.status_code} from {where}: "
                              f"{response.text[:200].strip()!r}")

    def _mail(self, notice: Notice) -> None:
        settings = self.settings
        message = EmailMessage()
        message["Subject"] = f"{settings.subject_prefix} {notice.subject}".strip()
        message["From"] = settings.mail_from
        message["To"] = ", ".join(settings.mail_to)
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain=settings.mail_from.rpartition("@")[2] or None)
        message.set_content(notice.text)
        context = ssl.create_default_context(cafile=str(settings.ca_bundle)
                                             if settings.ca_bundle else None)
        log.debug("e-mail notification via %s:%s to %d recipient(s)", settings.smtp_host,
                  settings.port, len(settings.mail_to))
        if settings.smtp_ssl:
            smtp = smtplib.SMTP_SSL(settings.smtp_host, settings.port,
                                    timeout=settings.timeout_seconds, context=context,
                                    local_hostname=_local_hostname())
        else:
            smtp = smtplib.SMTP(settings.smtp_host, settings.port,
                                timeout=settings.timeout_seconds,
                                local_hostname=_local_hostname())
        with smtp:
            smtp.ehlo()
            if settings.smtp_starttls:
                smtp.starttls(context=context)
                smtp.ehlo()
            if settings.smtp_username:
                smtp.login(_reveal(settings.smtp_username), settings.smtp_password.reveal())
            smtp.send_message(message)


class _HTTPStatus(Exception):
    pass


def _os_reason(exc: BaseException) -> str | None:
    """The operating system's reason ("Connection refused") somewhere in an exception chain."""
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen or len(seen) > 20:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__:
            return "timed out"
        todo += [current.__cause__, current.__context__]
    return None


def _local_hostname() -> str:
    try:
        return socket.getfqdn()
    except OSError:
        return "localhost"
