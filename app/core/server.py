"""Running the API in production: uvicorn worker processes with TCP_NODELAY on every connection.

With ``--workers N`` uvicorn binds the listening socket itself with ``proto`` 0; accepted sockets inherit
it, and asyncio turns Nagle's algorithm off only for sockets that report ``IPPROTO_TCP``
(Kludex/uvicorn#3149, open). Nagle then holds back the second write of every response on a
keep-alive connection until the client's delayed ACK: measured here, each submit over a reused
connection took ~50 ms instead of ~9 ms with 2 or 4 workers (BENCHMARKS §4). The protocol below sets
the option on each connection itself, whatever the listener, so ``presso api`` (and the Docker image)
serve without that stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol

APP = "presso.app.main:create_app"


def set_nodelay(transport: asyncio.BaseTransport) -> bool:
    """Turn Nagle's algorithm off on a TCP transport's socket; False where there is none (Unix socket)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True
    return False


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with TCP_NODELAY set on each connection as it is accepted."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)


def run(host: str, port: int, workers: int, log_level: str = "info", access_log: bool = True) -> None:
    """Serve ``presso.app.main:create_app`` (settings from the environment) with ``workers`` processes."""
    import uvicorn

    if workers > 1:
        multiprocess_metrics_dir()
    from uvicorn.config import LOGGING_CONFIG

    from presso.app.core.logs import uvicorn_log_config

    config = uvicorn_log_config()  # PRESSO_LOG_FORMAT=json: uvicorn's lines as JSON too
    uvicorn.run(APP, factory=True, host=host, port=port, workers=workers, http=NoDelayH11Protocol,
                log_level=log_level, access_log=access_log, log_config=config or LOGGING_CONFIG)


def multiprocess_metrics_dir() -> str:
    """Prometheus multiprocess mode for several API processes: PROMETHEUS_MULTIPROC_DIR (a fresh private
    directory unless one is given; it is emptied either way, as prometheus_client requires at start), inherited
    by the processes uvicorn starts. Returns the directory."""
    import os
    import tempfile
    from pathlib import Path

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="presso-prometheus-"))
    if given and path.is_dir():
        for child in path.glob("*.db"):  # only prometheus_client's files
            child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    os.chmod(path, 0o700)
    return str(path)
