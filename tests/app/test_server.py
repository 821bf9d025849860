"""`presso api` (app/core/server.py): connections get TCP_NODELAY even on a listener bound the way
uvicorn's --workers mode binds it (proto 0, on which asyncio leaves Nagle's algorithm on)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from presso.app.core.server import APP, NoDelayH11Protocol
from presso.cli import main as presso_main


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def _served(protocol: type[asyncio.Protocol]) -> Iterator[tuple[uvicorn.Server, int]]:
    listener = socket.socket(socket.AF_INET)  # as uvicorn's Config.bind_socket makes it: proto 0
    listener.bind(("127.0.0.1", 0))
    assert listener.proto == 0
    server = uvicorn.Server(uvicorn.Config(_ok, http=protocol, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield server, listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


def _nodelay_of_accepted(protocol: type[asyncio.Protocol]) -> int:
    """Serve one keep-alive request, then read TCP_NODELAY off the server's side of the connection."""
    with _served(protocol) as (server, port), socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        (conn,) = server.server_state.connections
        sock = conn.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_plain_h11_on_a_proto_0_listener_leaves_nagle_on():
    assert _nodelay_of_accepted(H11Protocol) == 0  # the upstream behaviour the fix is for


def test_presso_protocol_sets_tcp_nodelay():
    assert _nodelay_of_accepted(NoDelayH11Protocol) != 0


def test_presso_api_runs_uvicorn_with_the_protocol(monkeypatch: pytest.MonkeyPatch):
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert presso_main(["api", "--workers", "3", "--port", "8123", "--no-access-log"]) == 0
    assert seen["app"] == APP and seen["factory"] is True
    assert seen["http"] is NoDelayH11Protocol
    assert (seen["workers"], seen["port"], seen["access_log"]) == (3, 8123, False)


def test_presso_api_rejects_zero_workers(capsys: pytest.CaptureFixture[str]):
    assert presso_main(["api", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
