"""The OpenAPI document as the API really behaves: bearer / X-API-Key security and the one error body.

FastAPI's generated document knows neither: the key is read from headers the routes hide from the schema,
and every 4xx is ``{"error": {"code", "message", "field"}}`` (app/core/errors.py), not FastAPI's
``{"detail": [...]}``. ``install_openapi(app)`` replaces ``app.openapi`` with a generator that adds

- the security schemes (``bearerAuth``: ``Authorization: Bearer presso_sk_...``; ``apiKeyHeader``:
  ``X-API-Key``; ``adminBearer`` for /v1/admin), required on every route that depends on the tenant or the
  admin key, so Swagger UI's "Authorize" sends the key;
- ``ErrorBody`` / ``ErrorDetail`` / ``FieldError`` and, per operation, the 401 / 403 / 404 / 409 / 422 / 429
  responses it can give with that schema (429 with ``Retry-After``), in place of ``HTTPValidationError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi import routing as fastapi_routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from presso.app.api.deps import current_tenant, require_admin

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}

ERROR_SCHEMAS: dict[str, Any] = {
    "FieldError": {
        "type": "object",
        "title": "FieldError",
        "required": ["field", "message"],
        "properties": {
            "field": {"type": "string", "description": "Dotted path of the failing field, e.g. recipe.steps.0.bits"},
            "message": {"type": "string"},
        },
    },
    "ErrorDetail": {
        "type": "object",
        "title": "ErrorDetail",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "Stable machine-readable code (docs/service.md, Errors).",
                     "examples": ["not_found"]},
            "message": {"type": "string", "description": "Human-readable explanation."},
            "field": {"type": "string", "description": "The request field at fault (validation errors, URIs).",
                      "examples": ["recipe.steps.0.bits"]},
            "details": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"},
                        "description": "Validation errors: every failing field."},
        },
    },
    "ErrorBody": {
        "type": "object",
        "title": "ErrorBody",
        "required": ["error"],
        "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}},
        "examples": [{"error": {"code": "validation_error", "message": "recipe.steps.0.bits: Input should be "
                                "less than or equal to 8", "field": "recipe.steps.0.bits",
                                "details": [{"field": "recipe.steps.0.bits",
                                             "message": "Input should be less than or equal to 8"}]}}],
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "presso_sk_...",
                   "description": "A tenant's API key: `Authorization: Bearer presso_sk_...`."},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "The same API key in `X-API-Key` (instead of Authorization)."},
    "adminBearer": {"type": "http", "scheme": "bearer",
                    "description": "The server's admin key (PRESSO_ADMIN_KEY), for /v1/admin only."},
}

_STATUS_TEXT = {
    401: ("Missing, unknown or revoked key (`unauthorized`)", ["unauthorized"]),
    403: ("The admin API is disabled: no PRESSO_ADMIN_KEY configured (`forbidden`)", ["forbidden"]),
    404: ("Not found (`not_found`); another tenant's resource is indistinguishable from a missing one",
          ["not_found"]),
    409: ("Conflict: `idempotency_conflict`, `job_finished` or `artifact_not_ready`",
          ["idempotency_conflict", "job_finished", "artifact_not_ready"]),
    422: ("Invalid request (`validation_error`, `invalid_model_uri`); `field` names the failing field",
          ["validation_error", "invalid_model_uri"]),
    429: ("Rate limited (`rate_limited`, `too_many_jobs`); retry after `Retry-After` seconds",
          ["rate_limited", "too_many_jobs"]),
}

# Operations that can answer 409, by (method, path).
_CONFLICTS = {
    ("post", "/v1/jobs"), ("post", "/v1/jobs/{job_id}/cancel"), ("get", "/v1/jobs/{job_id}/artifact"),
    ("get", "/v1/jobs/{job_id}/report"), ("get", "/v1/jobs/{job_id}/files/{path}"),
    ("get", "/v1/jobs/{job_id}/decoded/{path}"), ("post", "/v1/admin/tenants"),
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """Every APIRoute with its effective path, also inside included routers (FastAPI >= 0.16x keeps those as
    ``_IncludedRouter`` entries of ``app.routes``; ``iter_route_contexts`` resolves them)."""
    iter_contexts = getattr(fastapi_routing, "iter_route_contexts", None)
    if iter_contexts is None:  # older FastAPI: included routes are copied into app.routes
        yield from (r for r in app.routes if isinstance(r, APIRoute))
        return
    for context in iter_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def _auth_of(route: Any) -> str | None:
    calls = set(_calls(route.dependant))
    if require_admin in calls:
        return "admin"
    if current_tenant in calls:
        return "tenant"
    return None


def _error_response(status: int) -> dict[str, Any]:
    text, codes = _STATUS_TEXT[status]
    response: dict[str, Any] = {
        "description": text,
        "content": {"application/json": {"schema": ERROR_REF,
                                          "example": {"error": {"code": codes[0], "message": "..."}}}},
    }
    if status == 429:
        response["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                               "schema": {"type": "integer"}}}
    return response


def _statuses(method: str, path: str, operation: dict[str, Any], auth: str | None) -> list[int]:
    out = []
    if auth is not None:
        out += [401, 429] if auth == "tenant" else [401, 403]
    if "{" in path:
        out.append(404)
    if (method, path) in _CONFLICTS:
        out.append(409)
    if operation.get("requestBody") or any(p.get("in") != "path" for p in operation.get("parameters", [])):
        out.append(422)
    else:  # a plain string path parameter cannot fail validation: FastAPI's default 422 would be noise
        operation["responses"].pop("422", None)
    return sorted(out)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    schemas = components.setdefault("schemas", {})
    schemas.update(ERROR_SCHEMAS)
    auth_by_op = {
        (method.lower(), route.path_format): _auth_of(route)
        for route in _api_routes(app) if route.include_in_schema
        for method in route.methods
    }
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            auth = auth_by_op.get((method, path))
            if auth == "tenant":
                operation["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
            elif auth == "admin":
                operation["security"] = [{"adminBearer": []}]
            responses = operation["responses"]
            for status in _statuses(method, path, operation, auth):
                responses[str(status)] = _error_response(status)
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body: never sent by this API
        schemas.pop(name, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the document from :func:`build_openapi` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
