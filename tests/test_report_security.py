"""Attacker-controlled identity data must not script the HTML, make the PDF fetch or embed files,
or become spreadsheet formulas. Each guard has a control case showing the test would catch it."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import threading
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from jinja2 import UndefinedError
from pypdf import PdfReader
from pypdf.generic import IndirectObject, StreamObject
from weasyprint import HTML
from weasyprint.urls import URLFetcher

from evidence_factory import (ATTACHMENT_NAME, FORMULA_NAME, FORMULA_PERSON, SCRIPT_NAME,
                              make_evidence)
from reports.html import environment, render_report, script
from reports.pdf import PackageOnlyFetcher, render_pdf
from reports.tables import neutralise, write_exceptions, write_frame

PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5"
           "ErkJggg==")


@pytest.fixture(scope="module")
def html():
    return render_report(make_evidence())


# --- HTML ---------------------------------------------------------------------------------------

def without_own_script(html: str) -> str:
    """The report with its one packaged inline script removed (after checking it is that)."""
    js, _ = script()
    blocks = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S | re.I)
    assert blocks == [str(js)], "exactly one script element, the packaged one"
    return html.replace(f"<script>{js}</script>", "")


@pytest.mark.parametrize("target", ["html", "pdf"])
def test_display_names_are_escaped(target):
    html = render_report(make_evidence(), target=target)
    text = html.replace("<wbr>", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;link rel=&#34;attachment&#34; href=&#34;file:///etc/passwd&#34;&gt;" in text
    assert SCRIPT_NAME not in text and ATTACHMENT_NAME not in text
    rest = without_own_script(html) if target == "html" else html
    assert not re.search(r"<\s*(script|link|img|iframe|object|embed|style\s+src)\b", rest[
        rest.index("</head>"):], re.I)


def test_script_is_allowed_by_its_hash_and_nothing_else_is():
    html = render_report(make_evidence())
    js, source = script()
    csp = unescape(re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">',
                             html)[1])
    policy = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == source == \
        f"'sha256-{base64.b64encode(hashlib.sha256(str(js).encode()).digest()).decode()}'"
    assert policy["img-src"] == "data:" and "connect-src" not in policy   # default: none
    assert "<script" not in render_report(make_evidence(), target="pdf")


def test_environment_autoescapes_and_is_strict():
    env = environment()
    # the report template is *.html.j2, which select_autoescape() would not cover
    assert env.get_template("report.html.j2").environment.autoescape is True
    assert env.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
    with pytest.raises(UndefinedError):
        env.from_string("{{ missing }}").render()


TAG = re.compile(r"<[a-zA-Z][^>]*>")
URL_ATTR = re.compile(r"""\s(?:src|href|data|action|poster|srcset|background)\s*=\s*"""
                      r"""(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)


def url_attributes(html: str) -> list[str]:
    """URL-bearing attribute values of real tags (escaped text has no '<', so it is skipped)."""
    return ["".join(m.groups(default="")) for tag in TAG.findall(html)
            for m in URL_ATTR.finditer(tag)]


def test_url_attribute_check_sees_external_urls():
    assert url_attributes('<p>x</p><img src="http://e.example/a"><a href=file:///etc>') == [
        "http://e.example/a", "file:///etc"]


TICKET_LINK = re.compile(r'<a class="ticket" href="(https?://[^"]+)" rel="noopener noreferrer '
                         r'nofollow" target="_blank">')


def test_report_html_is_self_contained(html):
    refs = url_attributes(html)
    assert refs, "the check itself must see the report's internal links"
    tickets = TICKET_LINK.findall(html)
    assert tickets == ["https://corp.atlassian.net/browse/OFF-311"]
    # a ticket link is navigation on click, never fetched; every other reference is inside
    assert all(ref.startswith(("#", "data:")) or ref in tickets for ref in refs), refs
    svg_refs = re.findall(r'xlink:href="([^"]*)"', html)
    assert svg_refs and all(ref.startswith("#") for ref in svg_refs)
    assert not re.search(r"url\(\s*['\"]?(?!data:|#)", html)
    assert "@import" not in html


# --- PDF ----------------------------------------------------------------------------------------

class CountingServer(ThreadingHTTPServer):
    def __init__(self):
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler):
                handler.send_response(200)
                handler.send_header("Content-Type", "text/css")
                handler.end_headers()
                handler.wfile.write(b"p { color: red }")

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def verify_request(self, request, client_address):
        self.hits += 1      # every connection, even one that never sends a request
        return True


@pytest.fixture
def server():
    srv = CountingServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def hostile_html(secret_path, port):
    return f"""<!DOCTYPE html><html><head>
<link rel="attachment" href="file:///etc/passwd">
<link rel="attachment" href="file://{secret_path}">
<link rel="stylesheet" href="http://127.0.0.1:{port}/style.css">
</head><body><p>hostile</p>
<img src="http://127.0.0.1:9/x">
<img src="http://127.0.0.1:{port}/pixel.png">
<img src="file://{secret_path}">
<a rel="attachment" href="file://{secret_path}">x</a>
</body></html>"""


def stream_bytes(pdf: bytes) -> bytes:
    """Every stream of the PDF, decompressed."""
    reader = PdfReader(io.BytesIO(pdf))
    out = []
    for gen, objects in reader.xref.items():
        for num in objects:
            obj = IndirectObject(num, gen, reader).get_object()
            if isinstance(obj, StreamObject):
                out.append(obj.get_data())
    return b"\n".join(out)


def test_pdf_fetches_nothing_and_embeds_nothing(tmp_path, server):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER-7731\n")
    fetcher = PackageOnlyFetcher()
    pdf = render_pdf(hostile_html(secret, server.server_address[1]), fetcher=fetcher)

    reader = PdfReader(io.BytesIO(pdf))
    assert reader.attachments == {}
    assert b"/EmbeddedFile" not in pdf
    assert b"TOP-SECRET-MARKER" not in stream_bytes(pdf)
    assert b"root:x:0:0" not in stream_bytes(pdf)
    assert server.hits == 0
    assert "file:///etc/passwd" in fetcher.refused
    assert "http://127.0.0.1:9/x" in fetcher.refused


def test_control_default_fetcher_would_leak(tmp_path, server):
    """The same HTML through WeasyPrint's default fetcher embeds the file and makes requests:
    the assertions above can fail."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER-7731\n")
    pdf = HTML(string=hostile_html(secret, server.server_address[1]),
               url_fetcher=URLFetcher(timeout=2)).write_pdf()
    assert PdfReader(io.BytesIO(pdf)).attachments
    assert b"TOP-SECRET-MARKER" in stream_bytes(pdf)
    assert server.hits > 0


def test_pdf_fetcher_serves_data_urls():
    fetcher = PackageOnlyFetcher()
    pdf = render_pdf(f'<p>pixel</p><img src="data:image/png;base64,{PNG_1PX}">', fetcher=fetcher)
    assert fetcher.refused == []
    assert b"/Image" in pdf


def test_report_pdf_of_hostile_evidence_has_no_attachment(html):
    fetcher = PackageOnlyFetcher()
    pdf = render_pdf(html, fetcher=fetcher)
    assert PdfReader(io.BytesIO(pdf)).attachments == {}
    assert fetcher.refused == []      # the escaped <link> is text, not an element


# --- CSV ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r", "\0"])
def test_neutralise_prefixes_formula_starts(prefix):
    assert neutralise(prefix + "1+1") == "'" + prefix + "1+1"


@pytest.mark.parametrize("text", ["alice@corp.example", "Bob", "", "1+1", " =1"])
def test_neutralise_leaves_plain_text(text):
    assert neutralise(text) == text


def cells(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return [c for row in csv.reader(fh) for c in row]


def test_exceptions_csv_neutralises_formulas(tmp_path):
    ev = make_evidence()
    write_exceptions(tmp_path / "exceptions.csv", ev.exceptions)
    values = cells(tmp_path / "exceptions.csv")
    assert "'" + FORMULA_NAME in values
    assert FORMULA_NAME not in values
    assert not [v for v in values if v[:1] in ("=", "+", "-", "@", "\t", "\r", "\0")]
    assert "28.5" in values          # numbers stay numbers


def test_population_csv_neutralises_formulas(tmp_path):
    ev = make_evidence()
    orphans = next(c for c in ev.controls if c.id == "orphaned-accounts").population
    write_frame(tmp_path / "orphans.csv", orphans)
    write_frame(tmp_path / "terminations.csv", ev.extra_populations["terminations"])
    values = cells(tmp_path / "orphans.csv") + cells(tmp_path / "terminations.csv")
    assert "'" + FORMULA_NAME in values
    assert "'" + FORMULA_PERSON in values
    assert not [v for v in values if v[:1] in ("=", "+", "-", "@", "\t", "\r", "\0")]
