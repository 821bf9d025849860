"""Helpers of the security tests: a tiny HTTP server with routes for hostile responses."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Served:
    base: str = ""
    routes: dict[str, bytes | Route] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)

    def count(self, path: str, n: int) -> None:
        self.sent[path] = self.sent.get(path, 0) + n


def make_handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            route = served.routes.get(path)
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif isinstance(route, bytes):
                data, status = route, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start, end = int(a), min(int(b) if b else len(route) - 1, len(route) - 1)
                    data, status = route[start : end + 1], 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{len(route)}")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                served.count(path, len(data))
            else:
                route(self)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def endless(served: Served, chunk: bytes = b"\0" * 65536) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                handler.wfile.write(chunk)
                served.count(handler.path.split("?")[0], len(chunk))
        except OSError:
            pass

    return route


def redirect(location: str) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route
