"""Logging setup: text (default) or one JSON object per line (``PRESSO_LOG_FORMAT=json``), with the job id and
the tenant on every line logged while they are known.

``bind(job_id=..., tenant_id=...)`` sets them for the current context (the worker binds the job it runs; the API
binds the caller's tenant and the job of ``/v1/jobs/{id}`` routes through ``request_context``). A request's
context is a mutable dict shared with the threads FastAPI runs its sync endpoints and dependencies in, so a
value set by the auth dependency is seen by the endpoint's lines too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_context: ContextVar[dict[str, str] | None] = ContextVar("presso_log_context", default=None)
FIELDS = ("job_id", "tenant_id")


def current() -> dict[str, str]:
    return dict(_context.get() or {})


def set_value(key: str, value: str | None) -> None:
    """Set ``key`` in the current context (shared with the request's threads); ignored outside a context."""
    ctx = _context.get()
    if ctx is not None and value:
        ctx[key] = value


@contextlib.contextmanager
def bind(**values: str | None) -> Iterator[dict[str, str]]:
    """A new context with ``values`` (and the enclosing context's) for the block."""
    ctx = {**(_context.get() or {}), **{k: v for k, v in values.items() if v}}
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts job_id / tenant_id on every record (None when unknown); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get() or {}
        for key in FIELDS:
            if getattr(record, key, None) is None:
                setattr(record, key, ctx.get(key))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "process": record.process, "thread": record.threadName,
        }
        for key in FIELDS:
            value = getattr(record, key, None) or (_context.get() or {}).get(key)
            if value:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter(fmt: str | None = None) -> logging.Formatter:
    fmt = (fmt or os.environ.get("PRESSO_LOG_FORMAT") or "text").lower()
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def install(handler: logging.Handler, fmt: str | None = None) -> None:
    """Give ``handler`` Presso's formatter and the context filter."""
    handler.setFormatter(formatter(fmt))
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())


def configure(level: int | str = logging.INFO, fmt: str | None = None) -> None:
    """The root logger: one stderr handler in the chosen format (replaces basicConfig)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        install(handler, fmt)
    root.setLevel(level)


async def request_context(request: Any, call_next: Any) -> Any:
    """HTTP middleware: a fresh log context per request, with the job id of /v1/jobs/{id}/... paths."""
    parts = request.url.path.strip("/").split("/")
    job_id = parts[2] if len(parts) >= 3 and parts[:2] == ["v1", "jobs"] else None
    with bind(job_id=job_id):
        return await call_next(request)


def uvicorn_log_config() -> dict[str, Any] | None:
    """uvicorn's logging config in JSON mode (its own loggers, access lines included, as JSON lines); None in
    text mode (uvicorn's default)."""
    if (os.environ.get("PRESSO_LOG_FORMAT") or "text").lower() != "json":
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"],
               "stream": "ext://sys.stderr"}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": "presso.app.core.logs.JsonFormatter"}},
        "filters": {"context": {"()": "presso.app.core.logs.ContextFilter"}},
        "handlers": {"default": handler},
        "loggers": {name: {"handlers": ["default"], "level": "INFO", "propagate": False}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }
