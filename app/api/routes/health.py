"""/healthz (process up), /readyz (database, broker, store reachable), /metrics (Prometheus)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_db(request: Request) -> None:
    with request.app.state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_broker(request: Request) -> None:
    celery = request.app.state.celery
    if celery is None:
        return
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _check_store(request: Request) -> None:
    request.app.state.store.ping()


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    checks: dict[str, Any] = {}
    for name, check in (("database", _check_db), ("broker", _check_broker), ("store", _check_store)):
        try:
            check(request)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - readiness reports every failure
            log.warning("readiness check %s failed: %s", name, exc)
            checks[name] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text: HTTP metrics (every API process in multiprocess mode) and job metrics from the database."""
    from presso.app.core.metrics import render

    return Response(render(request.app.state.engine), media_type=CONTENT_TYPE_LATEST)
