"""report.html in a real browser: headless Chromium (Debian's ``chromium``) loads it, logs no
console error, makes no request but for the file itself, runs its table script (filter, sort),
opens no dialog for the hostile display names, and leaves a screenshot.

The browser is driven over the Chrome DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL on file descriptors 3 and 4), so no websocket library and no
downloaded browser are needed. Skipped when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from evidence_factory import SCRIPT_NAME, make_evidence
from reports.html import render_report

CHROMIUM = os.environ.get("ACCESSPROOF_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is not installed (apt-get install chromium)")


class Browser:
    """A minimal CDP client over --remote-debugging-pipe."""

    def __init__(self, profile: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:          # the child reads commands on fd 3, answers on fd 4
            # via fds above 10 first: a pipe end may itself be 3 or 4, and dup2 onto itself
            # would keep its close-on-exec flag
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-default-apps", "--mute-audio", "--disable-dev-shm-usage",
             "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the pipe: "
                                       + self.proc.stderr.read().decode(errors="replace")[-2000:])
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, *, session: bool = True,
             timeout: float = 20) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"])
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = b.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                    "flatten": True}, session=False)
        b.session = attached["sessionId"]
        for domain in ("Network", "Runtime", "Log", "Page"):
            b.send(f"{domain}.enable")
        yield b
    finally:
        b.close()


def test_report_html_in_headless_chromium(tmp_path, browser):
    ev = make_evidence(extra_exceptions=40)
    report = tmp_path / "report.html"
    report.write_text(render_report(ev), encoding="utf-8")
    url = report.as_uri()
    browser.send("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1000,
                                                        "deviceScaleFactor": 1, "mobile": False})
    browser.send("Page.navigate", {"url": url})
    browser.wait_for("Page.loadEventFired")
    assert browser.evaluate("document.documentElement.dataset.ready") == "1"   # script ran

    # the tables: sortable and filterable without a network
    assert browser.evaluate("document.querySelectorAll('table.interactive').length") >= 5
    table = "document.getElementById('exceptions-deprovisioning-timely')"
    assert browser.evaluate(f"{table}.tBodies[0].rows.length") == 43
    shown = browser.evaluate(f"""(() => {{
        const input = document.querySelector('#exceptions-deprovisioning-timely-tools input');
        input.value = 'bob.tables';
        input.dispatchEvent(new Event('input'));
        return [{table}.dataset.shown,
                document.querySelector('#exceptions-deprovisioning-timely-tools .count')
                    .textContent];
    }})()""")
    assert shown == ["1", "1 of 43 rows"]
    order = browser.evaluate(f"""(() => {{
        const input = document.querySelector('#exceptions-deprovisioning-timely-tools input');
        input.value = '';
        input.dispatchEvent(new Event('input'));
        const heads = Array.from({table}.tHead.rows[1].cells);
        const col = heads.findIndex(th => th.textContent.startsWith('Over SLA'));  // numeric
        const th = heads[col];
        th.querySelector('button').click();
        th.querySelector('button').click();                 // descending
        return [th.getAttribute('aria-sort'),
                Array.from({table}.tBodies[0].rows).slice(0, 3)
                     .map(r => r.cells[col].dataset.v)];
    }})()""")
    assert order[0] == "descending"
    assert [float(v) for v in order[1]] == sorted((float(v) for v in order[1]), reverse=True)
    assert float(order[1][0]) == 262.0

    # hostile display names are text: no dialog, no element made from them
    assert browser.evaluate(f"document.body.textContent.includes({json.dumps(SCRIPT_NAME)})")
    assert browser.evaluate("document.scripts.length") == 1

    png = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"])
    (tmp_path / "report.png").write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    if os.environ.get("ACCESSPROOF_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "report.png", os.environ["ACCESSPROOF_SCREENSHOT_DIR"])

    browser.evaluate("new Promise(r => setTimeout(r, 200))")      # late events, if any
    methods = [e.get("method") for e in browser.events]
    assert "Page.javascriptDialogOpening" not in methods
    requests = [e["params"]["request"]["url"] for e in browser.events
                if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(r == url or r.startswith("data:") for r in requests), requests
    errors = [e["params"] for e in browser.events
              if (e.get("method") == "Runtime.consoleAPICalled"
                  and e["params"]["type"] in ("error", "assert", "warning"))
              or e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"]["level"] in ("error", "warning"))]
    assert errors == []


def test_a_tampered_script_is_blocked_by_the_policy(tmp_path, browser):
    """Control for the test above: the page's CSP allows its script only by hash, so a changed
    script does not run and the browser reports it — the console check can fail."""
    html = render_report(make_evidence()).replace("\"use strict\";", "\"use strict\"; ", 1)
    (tmp_path / "report.html").write_text(html, encoding="utf-8")
    browser.send("Page.navigate", {"url": (tmp_path / "report.html").as_uri()})
    browser.wait_for("Page.loadEventFired")
    assert browser.evaluate("document.documentElement.dataset.ready") is None
    browser.evaluate("new Promise(r => setTimeout(r, 200))")
    logged = [e["params"]["entry"]["text"] for e in browser.events
              if e.get("method") == "Log.entryAdded"]
    assert any("Content Security Policy" in text for text in logged), logged
