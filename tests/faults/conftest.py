"""Fixtures of the fault-injection tests: a private Postgres database and a cluster (two workers) per module.

Each module gets its OWN database (``presso_faults_<random>``, migrated, dropped afterwards), not the shared
``presso_test``: the cluster's reapers act on every job of their database, and other test sessions that use
``presso_test`` at the same time (another checkout's ``make test`` on the same Postgres) close all active
jobs there when they start (the ``pg_url`` fixture). On the shared database that sweep cancelled the fault
jobs in flight (seen as ``test_redis_lost_with_jobs_queued[flushdb-2]`` failing with every job
``cancelled`` and no error message), and these reapers in turn requeued and ran the other sessions' jobs.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # faultkit (pytest runs with importlib mode)

from faultkit import Cluster, RedisServer, S3Endpoint, make_cluster_env, publisher_for  # noqa: E402
from svc_helpers import (  # noqa: E402
    ADMIN_KEY,
    ARTIFACT_BUCKET,
    MODEL_BUCKET,
    migrated_database,
    upload_dir,
    worker_context,
)

from presso.app.core.settings import Settings  # noqa: E402
from presso.app.tenants.service import ensure_tenant  # noqa: E402


@pytest.fixture(scope="module")
def fault_db_url(pg_url: str) -> Iterator[str]:
    """A fresh, migrated database on the test Postgres server, dropped after the module."""
    with migrated_database(pg_url, "presso_faults") as url:
        yield url


@pytest.fixture(scope="module")
def cluster(fault_db_url: str, s3_endpoint: str, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Two workers with faultkit.WORKER_ENV, updated by the test module's ``CLUSTER_ENV`` dict if it has one."""
    root = tmp_path_factory.mktemp("faults")
    markers, work_dir = root / "markers", root / "work"
    markers.mkdir()
    work_dir.mkdir()
    redis = RedisServer(root)
    s3: S3Endpoint | None = None
    c: Cluster | None = None
    try:
        s3 = S3Endpoint()  # its own port, so an outage here leaves the other tests' S3 server alone
        prefix = f"faults-{uuid.uuid4().hex[:8]}"
        store_url = f"s3://{ARTIFACT_BUCKET}/{prefix}"
        env = make_cluster_env(dict(os.environ), pg_url=fault_db_url, redis_url=redis.url, s3_url=s3.url,
                               store_url=store_url, data_dir=root / "data", markers=markers, work_dir=work_dir,
                               admin_key=ADMIN_KEY)
        env.update(getattr(request.module, "CLUSTER_ENV", {}))
        settings = Settings(database_url=fault_db_url, broker_url=redis.url, store_url=store_url,
                            s3_endpoint_url=s3.url, admin_key=ADMIN_KEY, rate_limit_per_s=0,
                            fetch_allow_private_hosts=["127.0.0.0/8"], max_attempts=5, presign_expires_s=120,
                            data_dir=root / "data")
        ctx = worker_context(settings)
        ctx.publisher = publisher_for(settings)
        with ctx.session_factory() as session:
            tenant = ensure_tenant(session=session, name=f"faults-{uuid.uuid4().hex[:8]}")
        model_uri = upload_dir(s3.url, MODEL_BUCKET, f"{prefix}-model", tiny_llama_dir)
        c = Cluster(root=root, env=env, settings=settings, ctx=ctx, tenant=tenant, model_uri=model_uri,
                    redis=redis, s3=s3, markers=markers, work_dir=work_dir, store_prefix=prefix)
        c.wait_ready([c.start_worker(), c.start_worker()])
        yield c
    finally:
        if c is not None:
            c.stop_all()  # every worker process group, before the database they use is dropped
            c.ctx.session_factory.kw["bind"].dispose()
        redis.kill()
        if s3 is not None:
            s3.stop()
