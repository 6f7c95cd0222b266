"""A local HTTP server of shard files for the remote-cache tests, with faults to order."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ShardServer:
    """Serves the files of ``root`` on 127.0.0.1 in a thread; counts requests per path and
    plays the faults queued in :attr:`faults` (path -> list of ``"503"``, ``"truncate"`` (full
    Content-Length, half the body, connection closed), ``"short"`` (about half the body and no
    Content-Length: the client cannot tell it is short), ``"stall"`` (half the body, then nothing
    until :meth:`close`), ``"slow"`` (the whole body after 0.3 s)) one per request."""

    def __init__(self, root: Path):
        self.root, self.requests, self.faults = root, Counter(), {}
        self.authorizations: list[str] = []
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next_fault(self, path: str) -> str:
        with self.lock:
            self.requests[path] += 1
            queued = self.faults.get(path, [])
            return queued.pop(0) if queued else ""

    def _handler(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?")[0].lstrip("/")
                server.authorizations.append(self.headers.get("Authorization", ""))
                fault = server._next_fault(path)
                file = server.root / path
                if fault == "503" or not file.is_file():
                    self.send_error(503 if fault == "503" else 404)
                    return
                body = file.read_bytes()
                if fault == "slow":
                    time.sleep(0.3)
                self.send_response(200)
                if fault != "short":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault in ("truncate", "stall", "short"):
                    self.wfile.write(body[:len(body) // 2 + 100])  # (mid-block: a tar reader can see the cut)
                    self.wfile.flush()
                    if fault == "stall":
                        server.released.wait(60)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler
