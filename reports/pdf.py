"""report.pdf: WeasyPrint of report.html, fetching nothing from outside the package.

WeasyPrint's default fetcher follows every URL, and ``<link rel="attachment" href="file:...">``
embeds a local file into the PDF. The report's CSS is inline and its images are ``data:`` URLs,
so the fetcher serves ``data:`` only and refuses the rest without touching the file system or
the network.
"""

from __future__ import annotations

import logging
import re

from weasyprint import HTML
from weasyprint.urls import URLFetcher

log = logging.getLogger(__name__)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


class PackageOnlyFetcher(URLFetcher):
    """Serves ``data:`` URLs; refuses (and records) every other URL."""

    def __init__(self):
        # allowed_protocols also guards the base class, should anything reach it
        super().__init__(allowed_protocols={"data"}, allow_redirects=False, timeout=1)
        self.refused: list[str] = []

    def fetch(self, url, headers=None):
        m = _SCHEME.match(url)
        if m and m[1].lower() == "data":
            return super().fetch(url, headers)
        self.refused.append(url)
        log.warning("report PDF: refused to fetch %.200s", url)
        raise ValueError(f"refused to fetch {url[:200]!r}: the report fetches nothing")


def render_pdf(html: str, *, fetcher: PackageOnlyFetcher | None = None) -> bytes:
    """The PDF of ``html`` (which carries its CSS inline), as bytes."""
    fetcher = fetcher or PackageOnlyFetcher()
    # base_url=None: relative URLs resolve to nothing rather than to the working directory
    return HTML(string=html, base_url=None, url_fetcher=fetcher).write_pdf()
