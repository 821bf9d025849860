"""A real local HTTP server for tests (fetch and security suites): byte routes with Range support,
and route factories for redirects and never-ending bodies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[BaseHTTPRequestHandler], None]


class Served:
    """Routes of the test HTTP server and the body bytes it sent per path."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes | Route] = {}
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()
        self.base = ""

    def count(self, path: str, n: int) -> None:
        with self.lock:
            self.sent[path] = self.sent.get(path, 0) + n


def send_bytes(handler: BaseHTTPRequestHandler, served: Served, data: bytes,
               headers: dict[str, str] | None = None) -> None:
    """Serve ``data`` honouring a single ``Range: bytes=a-b`` header (plus ``headers``, e.g. an ETag)."""
    rng = handler.headers.get("Range")
    status, body = 200, data
    if rng and rng.startswith("bytes="):
        a, _, b = rng[6:].partition("-")
        start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
        status, body = 206, data[start : end + 1]
    # counted before anything is sent: a client may return as soon as it has the headers (an identity probe does)
    served.count(handler.path.split("?")[0], len(body))
    handler.send_response(status)
    if status == 206:
        handler.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def make_handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            route = served.routes.get(self.path.split("?")[0])
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif isinstance(route, bytes):
                send_bytes(self, served, route)
            else:
                route(self)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def redirect_to(location: str) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def endless(served: Served, *, chunk: bytes = b"\0" * 65536, pause_s: float = 0.0) -> Route:
    """A response with no length that never ends (until the client goes away)."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                handler.wfile.write(chunk)
                handler.wfile.flush()
                served.count(handler.path.split("?")[0], len(chunk))
                if pause_s:
                    time.sleep(pause_s)
        except OSError:
            pass

    return route


@contextmanager
def serve_http() -> Iterator[Served]:
    """Serve on a free loopback port; ``served.base`` is its URL; routes can change while it runs."""
    served = Served()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(served))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
