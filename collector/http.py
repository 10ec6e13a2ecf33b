"""HTTP for the integrations that speak plain HTTPS (Graph, Jira, ServiceNow): one session
factory, one retry policy, one place that decides retriable vs fatal.

Retriable: connection errors, 429 and 500/502/503/504 — honouring ``Retry-After``, with
exponential backoff and jitter, capped attempts (urllib3 ``Retry``). Everything else is fatal and
becomes a ``SourceError`` naming the source, the request and what the server said; 401/403 say
which credential or permission to check. Secrets never appear in messages: URLs are shown
without their query strings and response bodies are cut short.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .errors import SourceError

RETRY_STATUSES = (429, 500, 502, 503, 504)
DEFAULT_TIMEOUT = (10, 60)        # connect, read (seconds)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6          # total tries per request, the first one included
    backoff_factor: float = 0.5    # 0.5, 1, 2, 4 … seconds between tries
    backoff_jitter: float = 0.25   # up to this many seconds added at random
    max_backoff: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After is waited only this long

    def urllib3(self) -> Retry:
        return _CappedRetry(self.max_retry_after,total=self.max_attempts - 1, connect=self.max_attempts - 1,
                     read=self.max_attempts - 1, status=self.max_attempts - 1,
                     backoff_factor=self.backoff_factor, backoff_jitter=self.backoff_jitter,
                     backoff_max=self.max_backoff, status_forcelist=RETRY_STATUSES,
                     allowed_methods=None,   # our POSTs are searches: safe to repeat
                     respect_retry_after_header=True, raise_on_status=False)


class _CappedRetry(Retry):
    """urllib3's Retry, with the wait a server may ask for (Retry-After) capped."""

    def __init__(self, max_retry_after: float = 120.0, **kwargs):
        self.max_retry_after = max_retry_after
        super().__init__(**kwargs)

    def new(self, **kwargs):
        retry = super().new(**kwargs)
        retry.max_retry_after = self.max_retry_after
        return retry

    def get_retry_after(self, response):
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.max_retry_after)


def make_session(*, ca_bundle: str | os.PathLike | None = None,
                 policy: RetryPolicy = RetryPolicy(), user_agent: str = "accessproof") \
        -> requests.Session:
    """A session with the retry policy mounted. TLS: ``ca_bundle`` when given, else
    ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` / certifi (DESIGN §9 "TLS")."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=policy.urllib3())
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = user_agent
    # An explicit bundle must win over the environment, which requests would otherwise prefer.
    if ca_bundle:
        session.verify = str(ca_bundle)
        session.trust_env = False
    else:
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or \
            os.environ.get("SSL_CERT_FILE") or True
    return session


def redact(url: str) -> str:
    """The URL without query string or credentials, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _body(response: requests.Response, limit: int = 300) -> str:
    text = (response.text or "").strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")


def check(response: requests.Response, *, source: str, what: str,
          auth_hint: str = "check the credentials", permission_hint: str = "") -> None:
    """Raise ``SourceError`` unless ``response`` succeeded (retries have already happened)."""
    if response.status_code < 400:
        return
    where = f"{what} ({response.request.method} {redact(response.url)})"
    status = response.status_code
    if status == 401:
        raise SourceError(source, f"{where}: 401 unauthorised — {auth_hint}; server said: "
                                  f"{_body(response)}")
    if status == 403:
        hint = f" — {permission_hint}" if permission_hint else ""
        raise SourceError(source, f"{where}: 403 forbidden{hint}; server said: {_body(response)}")
    if status in RETRY_STATUSES:
        raise SourceError(source, f"{where}: {status} after every retry "
                                  f"(Retry-After {response.headers.get('Retry-After', 'none')}); "
                                  f"server said: {_body(response)}")
    raise SourceError(source, f"{where}: HTTP {status}; server said: {_body(response)}")


def get_json(session: requests.Session, url: str, *, source: str, what: str,
             timeout=DEFAULT_TIMEOUT, method: str = "GET", auth_hint: str = "check the "
             "credentials", permission_hint: str = "", **kwargs) -> dict:
    """One request (GET unless ``method``), decoded JSON; every failure is a ``SourceError``.
    ``kwargs`` go to ``requests`` (params, json, headers, auth)."""
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.exceptions.RetryError as exc:
        raise SourceError(source, f"{what} ({redact(url)}): gave up after retries ({exc})") \
            from None
    except requests.exceptions.SSLError as exc:
        raise SourceError(source, f"{what} ({redact(url)}): TLS verification failed — set "
                                  f"ca_bundle or REQUESTS_CA_BUNDLE ({exc})") from None
    except requests.exceptions.RequestException as exc:
        raise SourceError(source, f"{what} ({redact(url)}): {type(exc).__name__}: {exc}") \
            from None
    check(response, source=source, what=what, auth_hint=auth_hint,
          permission_hint=permission_hint)
    try:
        return response.json()
    except ValueError:
        raise SourceError(source, f"{what} ({redact(url)}): the response is not JSON: "
                                  f"{_body(response, 120)}") from None
