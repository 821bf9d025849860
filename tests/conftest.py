"""Shared fixtures of the service tests: the REAL Postgres, Redis and an S3 server (moto), no mocks.

Postgres: PRESSO_TEST_DATABASE_URL (default presso_test on 127.0.0.1:5432, user postgres); each session works
in its own copy of that name with a random suffix, dropped at the end.
Redis: PRESSO_TEST_REDIS_URL (default db 11), shared; each session's queue and rate-limiter keys carry a
prefix of its own (``broker_prefix``), so concurrent sessions never take each other's tasks. `make test`
starts both when they are not answering.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # svc_helpers (pytest runs with importlib mode)

from svc_helpers import (  # noqa: E402
    ADMIN_KEY,
    ARTIFACT_BUCKET,
    MODEL_BUCKET,
    PG_URL,
    REDIS_URL,
    Api,
    drop_redis_keys,
    free_port,
    new_tenant,
    write_tiny_llama,
)


def _ensure_database(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conninfo = f"host={u.host} port={u.port or 5432} user={u.username} dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (u.database,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{u.database}"')


def _drop_database(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conninfo = f"host={u.host} port={u.port or 5432} user={u.username} dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated database of this session's own (PRESSO_TEST_DATABASE_URL's name + a random suffix),
    dropped at the end: concurrent sessions on one Postgres never see, reap or cancel each other's jobs."""
    from sqlalchemy.engine import make_url

    from presso.app.core.migrate import upgrade
    from presso.app.core.settings import Settings

    base = make_url(PG_URL)
    url = base.set(database=f"{base.database}_{uuid.uuid4().hex[:8]}").render_as_string(hide_password=False)
    _ensure_database(url)
    upgrade(Settings(database_url=url))
    yield url
    _drop_database(url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def broker_prefix(redis_url: str) -> Iterator[str]:
    """This session's prefix of every Redis key (PRESSO_BROKER_KEY_PREFIX); its keys are deleted at the end."""
    prefix = f"presso-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    drop_redis_keys(redis_url, prefix)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto server mode) with the test buckets."""
    import boto3
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ[k] = v
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for bucket in (ARTIFACT_BUCKET, MODEL_BUCKET):
        s3.create_bucket(Bucket=bucket)
    yield endpoint
    server.stop()


@pytest.fixture
def make_settings(pg_url: str, redis_url: str, broker_prefix: str, s3_endpoint: str, tmp_path: Path) -> Any:
    from presso.app.core.settings import Settings

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_url, broker_key_prefix=broker_prefix,
            store_url=f"s3://{ARTIFACT_BUCKET}/{uuid.uuid4().hex[:8]}", s3_endpoint_url=s3_endpoint,
            admin_key=ADMIN_KEY, rate_limit_per_s=0, allowed_file_roots=[tmp_path],
            fetch_allow_private_hosts=["127.0.0.0/8"], fetch_allow_http=True, lease_s=30,
            retry_backoff_s=0.5, republish_after_s=60, reaper_interval_s=1,
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def app_client(make_settings: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from presso.app.main import create_app

    with TestClient(create_app(make_settings())) as client:
        yield client


@pytest.fixture
def api(app_client: Any) -> Api:
    return new_tenant(app_client)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")




@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny matrices: one thread is faster than several on a shared machine (use with usefixtures)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
