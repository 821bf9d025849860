"""``PressoClient``: the synchronous SDK of the Presso REST API (httpx)."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin

import httpx

from presso.client import core
from presso.client.config import resolve
from presso.client.core import PressoError, RetryPolicy
from presso.client.models import Artifact, Job, JobPage, LogPage, Method, Plan, Report


class PressoClient:
    """A client of one Presso server, bound to one tenant's API key.

    ``server`` and ``api_key`` default to the environment, then the user config file, then the dev key of
    ``presso serve`` (presso.client.config). Every call returns a typed model (presso.client.models) or raises
    ``PressoError`` with the API's error ``code``. Connection errors and 429/502/503/504 answers are retried
    with backoff (``retry``; ``RetryPolicy(retries=0)`` turns it off), honouring ``Retry-After``.

    >>> with PressoClient() as client:                                     # doctest: +SKIP
    ...     job = client.submit({"model_uri": "s3://models/llama", "recipe": {"steps": [{"method": "rtn"}]}})
    ...     job = client.wait(job.id, progress=True)
    ...     client.download(job.id, "./out")
    """

    def __init__(self, server: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, profile: str | None = None) -> None:
        self.server, self.api_key = resolve(server, api_key, profile)
        self.retry = retry or RetryPolicy()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PressoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        request = self.http.build_request(method, path, **kwargs)
        attempt = 0
        while True:
            try:
                resp = self.http.send(request)
            except httpx.TransportError as exc:
                delay = self.retry.delay_for_error(exc, request, attempt)
                if delay is None:
                    raise core.connection_error(exc, request) from exc
            else:
                delay = self.retry.delay_for_response(resp, attempt)
                if delay is None:
                    core.raise_for_error(resp)
                    return resp
                resp.close()
            time.sleep(delay)
            attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    # -- jobs --------------------------------------------------------------------------------------
    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Queue a job (``POST /v1/jobs``): ``body`` is a JobSpec (model_uri, recipe or target, data,
        evaluation, name, labels, metadata, callback_url, force). Safe to retry: it always carries an
        Idempotency-Key (a fresh one unless given)."""
        return Job.model_validate(self._json("POST", "/v1/jobs", json=body,
                                             headers=core.submit_headers(idempotency_key)))

    def get(self, job_id: str) -> Job:
        """One job with its state, progress, metrics and error."""
        return Job.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, *, state: str | None = None, name: str | None = None, labels: dict[str, str] | None = None,
             created_after: Any = None, created_before: Any = None, limit: int = 50,
             cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first; ``labels`` must all match. Pass ``page.next_cursor`` as ``cursor``."""
        params = core.list_params(state=state, name=name, labels=labels, created_after=created_after,
                                  created_before=created_before, limit=limit, cursor=cursor)
        return JobPage.model_validate(self._json("GET", "/v1/jobs", params=params))

    def iter_jobs(self, **filters: Any) -> Iterator[Job]:
        """Every job matching the filters of ``list_jobs``, following the cursor."""
        cursor = None
        while True:
            page = self.list_jobs(cursor=cursor, **filters)
            yield from page.data
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one stops within seconds."""
        return Job.model_validate(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def artifact(self, job_id: str) -> Artifact:
        """The manifest of a succeeded job: every file with size, sha256 and a download URL."""
        return Artifact.model_validate(self._json("GET", f"/v1/jobs/{job_id}/artifact"))

    def report(self, job_id: str) -> Report:
        """The per-layer report (report.json) of a succeeded job."""
        return Report.model_validate(self._json("GET", f"/v1/jobs/{job_id}/report"))

    def logs(self, job_id: str, *, after: int = 0, limit: int = 500) -> LogPage:
        """The job's log lines with ``seq`` > ``after`` (the worker's log of every attempt)."""
        return LogPage.model_validate(self._json("GET", f"/v1/jobs/{job_id}/logs",
                                                 params={"after": after, "limit": limit}))

    def methods(self) -> list[Method]:
        """Every compression method with the JSON schema of its parameters."""
        return [Method.model_validate(m) for m in self._json("GET", "/v1/methods")["data"]]

    def plan(self, body: dict[str, Any]) -> Plan:
        """Dry run of ``submit``: the resources the job would need per worker class (``POST /v1/plan``)."""
        return Plan.model_validate(self._json("POST", "/v1/plan", json=body))

    def job_plan(self, job_id: str) -> Plan:
        """The plan of a submitted job."""
        return Plan.model_validate(self._json("GET", f"/v1/jobs/{job_id}/plan"))

    def webhook_secret(self, *, rotate: bool = False) -> str:
        """The tenant's webhook signing key (``rotate=True``: replace it); see presso.client.webhooks.verify."""
        secret: str = self._json("POST" if rotate else "GET", "/v1/webhooks/secret")["secret"]
        return secret

    def default_callback(self) -> str | None:
        """The tenant's default callback URL (for jobs that give none), or None."""
        url: str | None = (self._json("GET", "/v1/webhooks/default"))["url"]
        return url

    def set_default_callback(self, url: str | None) -> str | None:
        """Set (None: clear) the tenant's default callback URL; it passes the SSRF guard (422 otherwise)."""
        done: str | None = (self._json("PUT", "/v1/webhooks/default", json={"url": url}))["url"]
        return done

    def wait(self, job_id: str, *, timeout: float = 3600, poll: float = 1.0,
             on_update: Callable[[Job], None] | None = None, progress: bool | IO[str] = False) -> Job:
        """Poll until the job is terminal and return it (whatever the outcome: check ``job.state``).

        ``on_update`` is called with every polled job; ``progress=True`` (or a text stream) draws one progress
        line on stderr (or that stream), rewritten in place whenever it changes. TimeoutError after ``timeout`` seconds.
        """
        stream = (sys.stderr if progress is True else progress) or None
        deadline = time.monotonic() + timeout
        drawn = ""
        while True:
            job = self.get(job_id)
            if on_update:
                on_update(job)
            if stream is not None:
                drawn = draw(stream, job, drawn)
            if job.done:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            time.sleep(poll)

    # -- download ----------------------------------------------------------------------------------
    def download(self, job_id: str, out: Path | str, *, restore: bool = True, overwrite: bool = False) -> list[Path]:
        """Download every manifest file, verify its sha256, and restore lossless-encoded files.

        ``out`` must be new or empty, or hold a previous Presso artifact and ``overwrite`` be given (then only
        that artifact's files are replaced): Presso never deletes what it did not write. Files are downloaded
        and decoded in a staging directory and moved into ``out`` only when all of them are verified.
        """
        from presso.compression.io.outdir import publish, staged_output

        out = Path(out)
        manifest = self.artifact(job_id)
        with staged_output(out, overwrite=overwrite) as stage:
            ready = stage / "files"
            written = [self._download_file(f.to_dict(), ready) for f in manifest.files]
            if restore and any(p.suffix == ".pzst" for p in written):
                ready = restore_dir(ready, stage / "restored")
            return [out / rel for rel in publish(ready, out, overwrite=overwrite)]

    def _download_file(self, entry: dict[str, Any], out: Path) -> Path:
        rel = Path(entry["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise PressoError(0, "unsafe_path", f"manifest names an unsafe path {entry['path']!r}")
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        url = urljoin(self.server + "/", entry["url"])
        same_origin = url.startswith(self.server)
        client = self.http if same_origin else httpx.Client(timeout=self.http.timeout)
        digest = hashlib.sha256()
        try:
            with client.stream("GET", url, follow_redirects=True) as resp, open(dest, "wb") as fh:
                if resp.status_code != 200:
                    raise PressoError(resp.status_code, "download_failed", f"GET {entry['path']}")
                for chunk in resp.iter_bytes(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
        finally:
            if not same_origin:
                client.close()
        if digest.hexdigest() != entry["sha256"]:
            dest.unlink(missing_ok=True)
            raise PressoError(0, "checksum_mismatch", f"sha256 of {entry['path']} does not match the manifest")
        return dest


def draw(stream: IO[str], job: Job, last: str = "") -> str:
    """Rewrite one progress line in place when it changed (a newline once the job is terminal); returns it."""
    line = core.progress_line(job)
    if line != last or job.done:
        stream.write("\r" + line + ("\n" if job.done else ""))
        stream.flush()
    return line


def restore_dir(packed: Path, restored: Path) -> Path:
    """Decode a downloaded lossless artifact into the new directory ``restored`` (every file sha256-checked by
    ``presso.codec.unpack_dir``) and return it. Deletes nothing: the caller owns both."""
    import shutil

    from presso.codec.files import INDEX, SUFFIX, unpack_dir

    unpack_dir(packed, restored)
    for path in sorted(p for p in packed.rglob("*") if p.is_file()):  # presso.json, report.json: beside the index
        rel = path.relative_to(packed)
        if rel.as_posix() != INDEX and path.suffix != SUFFIX and not (restored / rel).exists():
            (restored / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, restored / rel)
    return restored
