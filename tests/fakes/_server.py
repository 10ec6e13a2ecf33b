"""What every emulator shares: a threaded HTTP server on 127.0.0.1 (ephemeral port) and a
handler that answers JSON. Each emulator keeps only its protocol."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without TCP_NODELAY each response waits ~40 ms for
    # a delayed ACK (Nagle), which a many-page test multiplies
    disable_nagle_algorithm = True
    content_type = "application/json"

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, *args):  # keep test output quiet
        pass


class LocalServer:
    """Start/stop and context management for an emulator; subclasses define ``start()`` as
    ``return self._serve(Handler, name=...)``."""

    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    url: str | None = None

    def _serve(self, handler: type[BaseHTTPRequestHandler], *, name: str,
               server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer,
               scheme: str = "http"):
        self._server = server_class(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        # a short poll interval makes stop() quick
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name=name)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
