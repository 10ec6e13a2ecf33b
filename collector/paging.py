"""Token paging shared by the integrations (AWS NextToken/Marker, Google pageToken, Graph
nextLink, Jira nextPageToken).

Why our own loop rather than each client library's paginator: the integration must see (and
record) every raw page, and a server that hands back a token it already gave us would otherwise
make us loop forever — singer-sdk's paginator guards against the same thing. Retries are not done
here: they belong to the HTTP client (one place).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import SourceError

Page = TypeVar("Page")


class TokenPaginator(Generic[Page]):
    """Iterate pages: ``fetch(None)``, then ``fetch(token)`` with the token of the previous page.

    ``next_token(page)`` returns the next token or a false value on the last page. A token that
    comes back a second time raises ``SourceError`` after yielding the page that carried it (so
    that page can still be recorded as evidence of the fault). ``pages`` counts fetched pages.
    """

    def __init__(self, fetch: Callable[[Any], Page], next_token: Callable[[Page], Any], *,
                 source: str, request: str, max_pages: int | None = None):
        self.fetch = fetch
        self.next_token = next_token
        self.source = source            # configured source name, for the error message
        self.request = request          # what is being paged, e.g. "cloudtrail:LookupEvents"
        self.max_pages = max_pages
        self.pages = 0

    def __iter__(self) -> Iterator[Page]:
        token: Any = None
        seen: set[str] = set()
        while True:
            page = self.fetch(token)
            self.pages += 1
            yield page
            token = self.next_token(page)
            if not token:
                return
            key = _key(token)
            if key in seen:
                raise SourceError(self.source, f"{self.request}: the server returned page token "
                                               f"{_short(token)} a second time (page "
                                               f"{self.pages}); stopped instead of looping")
            seen.add(key)
            if self.max_pages is not None and self.pages >= self.max_pages:
                raise SourceError(self.source, f"{self.request}: more than {self.max_pages} "
                                               "pages; stopped")


def _key(token: Any) -> str:
    # Tokens are usually strings, but some APIs page with dicts or numbers.
    return token if isinstance(token, str) else json.dumps(token, sort_keys=True, default=str)


def _short(token: Any) -> str:
    text = repr(token)
    return text if len(text) <= 40 else text[:37] + "...'"
