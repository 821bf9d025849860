"""Prometheus metrics of the API process."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import Counter, Histogram

JOBS_SUBMITTED = Counter("presso_jobs_submitted_total", "Jobs accepted by POST /v1/jobs")
REQUESTS = Counter("presso_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "presso_http_request_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


async def metrics_middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    start = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    name = getattr(route, "path", "unmatched")
    LATENCY.labels(request.method, name).observe(time.perf_counter() - start)
    REQUESTS.labels(request.method, name, str(response.status_code)).inc()
    return response
