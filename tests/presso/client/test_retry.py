"""RetryPolicy against the real API: 429 with Retry-After from the Redis rate limiter, a server that comes up
late (connection refused, then answers), and the errors raised when retrying is off or the wait too long."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
import uvicorn
from svc_helpers import free_port, new_tenant, serve_api

from presso.client import AsyncPressoClient, PressoClient, PressoError, RetryPolicy
from presso.client.core import retry_after


def test_429_is_retried_after_retry_after(make_settings: Any) -> None:
    # 1 token per 2 s, burst 1: the second call is answered 429 with Retry-After: 2
    settings = make_settings(rate_limit_per_s=0.5, rate_limit_burst=1)
    with serve_api(settings) as url, httpx.Client(base_url=url) as admin:
        tenant = new_tenant(admin)
        with PressoClient(url, tenant.key, retry=RetryPolicy(retries=0)) as strict:
            strict.list_jobs()
            with pytest.raises(PressoError) as limited:
                strict.list_jobs()
            assert limited.value.status == 429 and limited.value.code == "rate_limited"
            assert limited.value.retry_after_s is not None and 1 <= limited.value.retry_after_s <= 2
        time.sleep(2.1)
        with PressoClient(url, tenant.key, retry=RetryPolicy(retries=3)) as client:
            start = time.monotonic()
            client.list_jobs()
            client.list_jobs()  # 429 first, then succeeds after Retry-After
            assert time.monotonic() - start >= 1.0
        time.sleep(2.1)
        with PressoClient(url, tenant.key, retry=RetryPolicy(retries=3, max_retry_after_s=0.5)) as impatient:
            impatient.list_jobs()
            start = time.monotonic()
            with pytest.raises(PressoError) as too_long:
                impatient.list_jobs()  # the server asks for more than we accept to wait: raised at once
            assert too_long.value.status == 429 and time.monotonic() - start < 0.5


def test_connection_refused_then_server_comes_up(make_settings: Any) -> None:
    from presso.app.main import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(make_settings()), host="127.0.0.1", port=port,
                                           log_level="warning"))

    def start_late() -> None:
        time.sleep(1.0)
        server.run()

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        with PressoClient(url, "k", retry=RetryPolicy(retries=0)) as strict, pytest.raises(PressoError) as down:
            strict.methods()
        assert down.value.status == 0 and down.value.code == "connection_failed"
        with PressoClient(url, "k", retry=RetryPolicy(retries=8, backoff_s=0.2, max_backoff_s=1.0)) as client:
            assert client.methods()  # /v1/methods needs no key
        while not server.started:
            time.sleep(0.05)

        async def async_call() -> int:
            async with AsyncPressoClient(url, "k") as client:
                return len(await client.methods())

        assert asyncio_run(async_call()) > 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def asyncio_run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def test_retry_after_parsing() -> None:
    assert retry_after(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    date = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after(date) == 0.0  # a date in the past: retry now
    assert retry_after(httpx.Response(503)) is None
    policy = RetryPolicy(retries=2, backoff_s=1, max_backoff_s=4)
    assert all(0 <= policy.backoff(a) <= min(4, 2 ** a) for a in range(6))
    assert policy.delay_for_response(httpx.Response(400), 0) is None
    assert policy.delay_for_response(httpx.Response(503, headers={"Retry-After": "1"}), 0) == 1.0
    assert policy.delay_for_response(httpx.Response(503), 2) is None  # retries spent
    post = httpx.Request("POST", "http://x/v1/jobs")
    keyed = httpx.Request("POST", "http://x/v1/jobs", headers={"Idempotency-Key": "k"})
    read = httpx.ReadTimeout("slow")
    assert policy.delay_for_error(read, post, 0) is None  # may have reached the server: not retried
    assert policy.delay_for_error(read, keyed, 0) is not None
    assert policy.delay_for_error(httpx.ConnectError("refused"), post, 0) is not None
