"""``AsyncPressoClient``: the asyncio twin of ``PressoClient`` (httpx.AsyncClient), same calls and models."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any

import httpx

from presso.client import core
from presso.client.config import resolve
from presso.client.core import RetryPolicy
from presso.client.models import Artifact, Job, JobPage, LogPage, Method, Plan, Report
from presso.client.sync import draw


class AsyncPressoClient:
    """``async with AsyncPressoClient() as client: job = await client.submit(body)``; see PressoClient for the
    meaning of every call (``download`` is sync-only: it decodes and verifies files on local disk)."""

    def __init__(self, server: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, profile: str | None = None) -> None:
        self.server, self.api_key = resolve(server, api_key, profile)
        self.retry = retry or RetryPolicy()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.AsyncClient(base_url=self.server, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncPressoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        request = self.http.build_request(method, path, **kwargs)
        attempt = 0
        while True:
            try:
                resp = await self.http.send(request)
            except httpx.TransportError as exc:
                delay = self.retry.delay_for_error(exc, request, attempt)
                if delay is None:
                    raise core.connection_error(exc, request) from exc
            else:
                delay = self.retry.delay_for_response(resp, attempt)
                if delay is None:
                    core.raise_for_error(resp)
                    return resp
                await resp.aclose()
            await asyncio.sleep(delay)
            attempt += 1

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._send(method, path, **kwargs)).json()

    async def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        return Job.model_validate(await self._json("POST", "/v1/jobs", json=body,
                                                   headers=core.submit_headers(idempotency_key)))

    async def get(self, job_id: str) -> Job:
        return Job.model_validate(await self._json("GET", f"/v1/jobs/{job_id}"))

    async def list_jobs(self, *, state: str | None = None, name: str | None = None,
                   labels: dict[str, str] | None = None, created_after: Any = None, created_before: Any = None,
                   limit: int = 50, cursor: str | None = None) -> JobPage:
        params = core.list_params(state=state, name=name, labels=labels, created_after=created_after,
                                  created_before=created_before, limit=limit, cursor=cursor)
        return JobPage.model_validate(await self._json("GET", "/v1/jobs", params=params))

    async def iter_jobs(self, **filters: Any) -> AsyncIterator[Job]:
        cursor = None
        while True:
            page = await self.list_jobs(cursor=cursor, **filters)
            for job in page.data:
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate(await self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    async def artifact(self, job_id: str) -> Artifact:
        return Artifact.model_validate(await self._json("GET", f"/v1/jobs/{job_id}/artifact"))

    async def report(self, job_id: str) -> Report:
        return Report.model_validate(await self._json("GET", f"/v1/jobs/{job_id}/report"))

    async def logs(self, job_id: str, *, after: int = 0, limit: int = 500) -> LogPage:
        return LogPage.model_validate(await self._json("GET", f"/v1/jobs/{job_id}/logs",
                                                       params={"after": after, "limit": limit}))

    async def methods(self) -> list[Method]:
        return [Method.model_validate(m) for m in (await self._json("GET", "/v1/methods"))["data"]]

    async def plan(self, body: dict[str, Any]) -> Plan:
        return Plan.model_validate(await self._json("POST", "/v1/plan", json=body))

    async def job_plan(self, job_id: str) -> Plan:
        return Plan.model_validate(await self._json("GET", f"/v1/jobs/{job_id}/plan"))

    async def webhook_secret(self, *, rotate: bool = False) -> str:
        secret: str = (await self._json("POST" if rotate else "GET", "/v1/webhooks/secret"))["secret"]
        return secret

    async def default_callback(self) -> str | None:
        """The tenant's default callback URL (for jobs that give none), or None."""
        url: str | None = (await self._json("GET", "/v1/webhooks/default"))["url"]
        return url

    async def set_default_callback(self, url: str | None) -> str | None:
        """Set (None: clear) the tenant's default callback URL; it passes the SSRF guard (422 otherwise)."""
        done: str | None = (await self._json("PUT", "/v1/webhooks/default", json={"url": url}))["url"]
        return done

    async def wait(self, job_id: str, *, timeout: float = 3600, poll: float = 1.0,
                   on_update: Callable[[Job], None | Awaitable[None]] | None = None,
                   progress: bool | IO[str] = False) -> Job:
        """As PressoClient.wait; ``on_update`` may be a coroutine function."""
        stream = (sys.stderr if progress is True else progress) or None
        deadline = time.monotonic() + timeout
        drawn = ""
        while True:
            job = await self.get(job_id)
            if on_update:
                result = on_update(job)
                if asyncio.iscoroutine(result):
                    await result
            if stream is not None:
                drawn = draw(stream, job, drawn)
            if job.done:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            await asyncio.sleep(poll)
