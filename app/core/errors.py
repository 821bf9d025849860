"""Domain errors and the one table that maps them to HTTP status codes.

Every error response has the body ``{"error": {"code": "...", "message": "..."}}``
(validation errors add ``field`` and ``details``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class AppError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class NotFound(AppError):
    code = "not_found"


class Unauthorized(AppError):
    code = "unauthorized"


class Forbidden(AppError):
    code = "forbidden"


class IdempotencyConflict(AppError):
    code = "idempotency_conflict"


class JobFinished(AppError):
    code = "job_finished"


class ArtifactNotReady(AppError):
    code = "artifact_not_ready"


class InvalidInput(AppError):
    code = "validation_error"


class InvalidModelUri(InvalidInput):
    code = "invalid_model_uri"


class InvalidCallbackUrl(InvalidInput):
    """A callback_url refused by the SSRF guard (private address, http://, malformed)."""

    code = "invalid_callback_url"


class InsufficientResources(InvalidInput):
    """No configured worker class has the memory or disk a job needs (compression/plan.py)."""

    code = "insufficient_resources"


class ArtifactCorrupt(AppError):
    """A stored object no longer matches its checksum: never served as if it were fine."""

    code = "artifact_corrupt"


class RateLimited(AppError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))})


class TooManyJobs(RateLimited):
    code = "too_many_jobs"


# The table: most specific class first.
ERROR_STATUS: list[tuple[type[AppError], int]] = [
    (InvalidInput, 422),
    (NotFound, 404),
    (Unauthorized, 401),
    (Forbidden, 403),
    (IdempotencyConflict, 409),
    (JobFinished, 409),
    (ArtifactNotReady, 409),
    (RateLimited, 429),
    (ArtifactCorrupt, 502),
]


def status_for(exc: AppError) -> int:
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}}


def field_path(loc: Sequence[Any], error_type: str = "") -> str:
    """``('body', 'recipe', 'steps', 0, 'gptq', 'bits')`` -> ``recipe.steps.0.bits``.

    Drops the request part and the discriminator tags pydantic inserts for tagged unions.
    """
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    from presso.compression.configs import CONFIGS

    out: list[str] = []
    for i, p in enumerate(parts):
        if isinstance(p, str) and p in CONFIGS and i > 0 and isinstance(parts[i - 1], int):
            continue
        out.append(str(p))
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        out.append("method")
    return ".".join(out) or "body"


def _clean_message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return JSONResponse(
        error_body(exc.code, exc.message, field=exc.field), status_code=status_for(exc), headers=exc.headers
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"field": field_path(e.get("loc", ()), e.get("type", "")), "message": _clean_message(str(e.get("msg")))}
        for e in exc.errors()
    ]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}"
    body = error_body("validation_error", message, field=first["field"], details=details)
    return JSONResponse(body, status_code=422)


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
