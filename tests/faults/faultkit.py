"""The fault-injection cluster: two real Celery worker processes, a private Redis server, a restartable S3
(moto) endpoint and the shared Postgres, plus the invariants every fault test asserts.

Workers run with short leases (3 s), a fast reaper (0.5 s) and the TEST-ONLY stage pause
(``PRESSO_TEST_STAGE_DELAY``, see workers/testhooks.py), which writes a marker file with the pid of the
process running the job, so a test kills exactly that process at a random moment inside the stage.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from svc_helpers import ARTIFACT_BUCKET, RTN, free_port

from presso.app.core.queue import CeleryPublisher, make_celery
from presso.app.core.settings import Settings
from presso.app.jobs import service
from presso.app.jobs.models import Job
from presso.app.jobs.schemas import JobCreate
from presso.app.tenants.models import Tenant
from presso.workers.context import WorkerContext

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "cancelled")
FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}
STAGE_DELAY_S = 1.0
WORKER_ENV = {
    "PRESSO_LEASE_S": "3", "PRESSO_REAPER_INTERVAL_S": "0.5", "PRESSO_REPUBLISH_AFTER_S": "5",
    "PRESSO_MAX_ATTEMPTS": "5", "PRESSO_RETRY_BACKOFF_S": "0.5", "PRESSO_RATE_LIMIT_PER_S": "0",
    "PRESSO_DEVICE": "cpu", "PRESSO_TEST_STAGE_DELAY": str(STAGE_DELAY_S),
    # Two CPUs shared with other work: one torch thread per job keeps a tiny job at ~1 s instead of ~10 s.
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
}


class RedisServer:
    """A private, non-persistent redis-server that tests may kill -9 and restart (losing every message)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


class S3Endpoint:
    """A moto server on its own port (same in-process backend as the session's); stop() is an outage."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._cls = ThreadedMotoServer
        self.server: Any = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the worker leads its own process group

    def ready(self) -> bool:
        return self.log.is_file() and b"ready." in self.log.read_bytes()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole worker: main process (consumer + reaper) and its job child."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (warm shutdown), SIGKILL after 15 s; then SIGKILL whatever is left in the process group
        (a job child the main process did not reap), so no worker process outlives the test."""
        if self.alive():
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    settings: Settings
    ctx: WorkerContext
    tenant: Tenant
    model_uri: str
    redis: RedisServer
    s3: S3Endpoint
    markers: Path
    work_dir: Path
    store_prefix: str
    workers: list[WorkerProc] = field(default_factory=list)

    # -- workers -----------------------------------------------------------------------------------
    def start_worker(self) -> WorkerProc:
        log = self.root / f"worker-{len(self.workers)}-{uuid.uuid4().hex[:6]}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "presso.cli", "worker", "--loglevel", "INFO"], cwd=ROOT,
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        worker = WorkerProc(proc, log)
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop()

    def live_workers(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.alive()]

    def wait_ready(self, workers: list[WorkerProc], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not all(w.ready() for w in workers):
            dead = [w for w in workers if not w.alive()]
            assert not dead, f"worker died at start:\n{dead[0].log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "workers not ready:\n" + self.logs_tail()
            time.sleep(0.2)

    def logs_tail(self, n: int = 4000) -> str:
        return "\n".join(f"--- {w.log.name}\n{w.log.read_text(errors='replace')[-n:]}" for w in self.workers)

    def log_count(self, text: str) -> int:
        """Occurrences of ``text`` in the logs of every worker started so far (dead ones included)."""
        needle = text.encode()
        return sum(w.log.read_bytes().count(needle) for w in self.workers if w.log.is_file())

    def wait_log(self, text: str, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.log_count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} logged fewer than {count} times\n{self.logs_tail()}"
            time.sleep(0.2)

    def worker_of(self, pid: int) -> WorkerProc:
        for w in self.live_workers():
            if w.pgid == os.getpgid(pid):
                return w
        raise LookupError(pid)

    # -- jobs --------------------------------------------------------------------------------------
    def submit(self, body: dict[str, Any] | None = None, *, publisher: Any = None) -> str:
        # force: every job really runs (identical inputs would otherwise reuse the first artifact: dedup)
        body = body or {"model_uri": self.model_uri, "recipe": RTN, "evaluation": FAST_EVAL, "force": True}
        with self.ctx.session_factory() as session:
            job, _ = service.create_job(session=session, tenant=self.tenant, body=JobCreate.model_validate(body),
                                        idempotency_key=None, settings=self.settings,
                                        publisher=publisher or self.ctx.publisher)
            return job.id

    def row(self, job_id: str) -> Job:
        with self.ctx.session_factory() as session:
            job = session.get(Job, job_id)
            assert job is not None, f"job {job_id} LOST: no row"
            return job

    def wait_terminal(self, ids: list[str], timeout: float = 180) -> dict[str, Job]:
        deadline = time.monotonic() + timeout
        while True:
            rows = {i: self.row(i) for i in ids}
            if all(r.state in TERMINAL for r in rows.values()):
                return rows
            if time.monotonic() > deadline:
                stuck = {i: (r.state, r.attempt, r.progress_stage) for i, r in rows.items() if r.state not in TERMINAL}
                raise AssertionError(f"jobs never reached a terminal state: {stuck}\n{self.logs_tail()}")
            time.sleep(0.25)

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float = 120) -> Job:
        deadline = time.monotonic() + timeout
        while (row := self.row(job_id)).state not in states:
            assert time.monotonic() < deadline, f"job {job_id} stuck in {row.state}\n{self.logs_tail()}"
            time.sleep(0.1)
        return row

    def wait_marker(self, job_id: str, stage: str, timeout: float = 120) -> int:
        """Pid of the process paused in ``stage`` of any attempt of the job."""
        deadline = time.monotonic() + timeout
        while True:
            found = sorted(glob.glob(str(self.markers / f"{job_id}.{stage}.*")))
            if found:
                text = Path(found[-1]).read_text()
                if text:
                    return int(text)
            assert time.monotonic() < deadline, f"job {job_id} never reached {stage}\n{self.logs_tail()}"
            time.sleep(0.02)

    # -- the invariants ----------------------------------------------------------------------------
    def s3_client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.s3.url, region_name="us-east-1")

    def job_objects(self, job: Job) -> list[str]:
        prefix = f"{self.store_prefix}/tenants/{job.tenant_id}/jobs/{job.id}/"
        pages = self.s3_client().get_paginator("list_objects_v2").paginate(Bucket=ARTIFACT_BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def check_invariants(self, ids: list[str], *, all_succeed: bool = True) -> dict[str, Job]:
        """0 jobs lost, all terminal, exactly one manifest per succeeded job (the row's), every sha256 right."""
        rows = {i: self.row(i) for i in ids}
        assert all(r.state in TERMINAL for r in rows.values()), {i: r.state for i, r in rows.items()}
        if all_succeed:
            failed = {i: (r.state, r.error_code, r.error_message) for i, r in rows.items() if r.state != "succeeded"}
            assert not failed, f"jobs did not succeed: {failed}\n{self.logs_tail()}"
        s3 = self.s3_client()
        for job in rows.values():
            assert job.attempt <= job.max_attempts
            manifests = [k for k in self.job_objects(job) if k.endswith("/manifest.json")]
            if job.state != "succeeded":
                assert manifests == [], f"{job.id} is {job.state} but published {manifests}"
                continue
            assert manifests == [f"{self.store_prefix}/{job.manifest_key}"], (job.id, manifests, job.manifest_key)
            manifest = json.loads(s3.get_object(Bucket=ARTIFACT_BUCKET, Key=manifests[0])["Body"].read())
            assert manifest["job_id"] == job.id and manifest["attempt"] == job.attempt
            assert {"config.json", "presso.json", "report.json"} <= {f["path"] for f in manifest["files"]}
            for entry in manifest["files"]:
                assert f"/attempt-{job.attempt}/" in entry["key"]
                body = s3.get_object(Bucket=ARTIFACT_BUCKET, Key=f"{self.store_prefix}/{entry['key']}")["Body"].read()
                assert len(body) == entry["size"] and hashlib.sha256(body).hexdigest() == entry["sha256"], entry
        return rows

    def leftover_job_dirs(self, ids: list[str]) -> list[str]:
        return [p.name for p in self.work_dir.glob("presso-job-*") if any(i in p.name for i in ids)]


def make_cluster_env(base: dict[str, str], *, pg_url: str, redis_url: str, s3_url: str, store_url: str,
                     data_dir: Path, markers: Path, work_dir: Path, admin_key: str) -> dict[str, str]:
    return {
        **base, **WORKER_ENV,
        "PRESSO_DATA_DIR": str(data_dir), "PRESSO_DATABASE_URL": pg_url, "PRESSO_BROKER_URL": redis_url,
        "PRESSO_STORE_URL": store_url, "PRESSO_S3_ENDPOINT_URL": s3_url, "PRESSO_ADMIN_KEY": admin_key,
        "PRESSO_FETCH_ALLOW_PRIVATE_HOSTS": "127.0.0.0/8", "PRESSO_TEST_STAGE_MARKERS": str(markers),
        "PRESSO_WORK_DIR": str(work_dir),
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    }


def publisher_for(settings: Settings) -> CeleryPublisher:
    return CeleryPublisher(make_celery(settings))
