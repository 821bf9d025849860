"""Prometheus metrics: the API processes' HTTP metrics, and the job metrics read from the database.

With several API processes (``presso api --workers N``) the HTTP counters live in each process; they are
aggregated in multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` names a directory the processes write their
samples to (``presso api`` sets one up when it starts more than one process), and ``/metrics`` merges them.
The job metrics (app/core/jobmetrics.py) come from the job table at scrape time, so every process answers the
same.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

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


def render(engine: Any) -> bytes:
    """The text of /metrics: this process's (or, in multiprocess mode, every process's) metrics + the jobs'."""
    from presso.app.core.jobmetrics import JobsCollector

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        own = generate_latest(registry)
    else:
        own = generate_latest(REGISTRY)
    jobs = CollectorRegistry()
    jobs.register(JobsCollector(engine))
    try:
        return own + generate_latest(jobs)
    except Exception:  # noqa: BLE001 - a database blip must not hide the process metrics
        logging.getLogger(__name__).warning("job metrics unavailable", exc_info=True)
        return own
