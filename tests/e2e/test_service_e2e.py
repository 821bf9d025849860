"""End to end over HTTP: uvicorn API, a real Celery worker subprocess on Redis, S3 via moto, Postgres.

No mocks: the test builds a tiny random-weight Llama, uploads it, submits an rtn job, waits for the
worker, downloads every manifest file through its presigned URL, checks every sha256 and loads the
result with transformers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from svc_helpers import (
    ADMIN_KEY,
    ARTIFACT_BUCKET,
    MODEL_BUCKET,
    RTN,
    drop_redis_keys,
    migrated_database,
    serve_api,
    stop_group,
    upload_dir,
)

from presso.client import PressoClient

ROOT = Path(__file__).resolve().parents[2]
FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}


def service_env(pg_url: str, redis_url: str, s3_endpoint: str, prefix: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PRESSO_DATA_DIR": str(data_dir), "PRESSO_DATABASE_URL": pg_url, "PRESSO_BROKER_URL": redis_url,
        "PRESSO_BROKER_KEY_PREFIX": f"presso-e2e-{prefix}:",
        "PRESSO_STORE_URL": f"s3://{ARTIFACT_BUCKET}/{prefix}", "PRESSO_S3_ENDPOINT_URL": s3_endpoint,
        "PRESSO_ADMIN_KEY": ADMIN_KEY, "PRESSO_FETCH_ALLOW_PRIVATE_HOSTS": "127.0.0.0/8",
        "PRESSO_LEASE_S": "20", "PRESSO_REAPER_INTERVAL_S": "2", "PRESSO_RATE_LIMIT_PER_S": "0",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("e2e")
    # a database of its own: queued jobs other tests leave in the session's database (API tests run no worker)
    # would otherwise be re-published by this stack's reaper and worked through before this module's jobs
    with migrated_database(pg_url, "presso_e2e") as db_url:
        yield from _stack(db_url, redis_url, s3_endpoint, tmp)


def _stack(pg_url: str, redis_url: str, s3_endpoint: str, tmp: Path) -> Iterator[dict[str, Any]]:
    env = service_env(pg_url, redis_url, s3_endpoint, uuid.uuid4().hex[:8], tmp / "data")
    broker_prefix = env["PRESSO_BROKER_KEY_PREFIX"]
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "presso.cli", "worker", "--loglevel", "INFO"], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from presso.app.core.settings import Settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with serve_api(Settings()) as url:
            admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            tenant = admin.post("/v1/admin/tenants", json={"name": f"e2e-{uuid.uuid4().hex[:8]}"}).json()
            key = admin.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={"name": "e2e"}).json()["secret"]
            yield {"url": url, "key": key, "worker": worker, "log": tmp / "worker.log", "tmp": tmp}
    finally:
        stop_group(worker)
        log.close()
        drop_redis_keys(redis_url, broker_prefix)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wait(client: PressoClient, job_id: str, stack: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
    try:
        return client.wait(job_id, timeout=timeout, poll=0.5)
    except TimeoutError:
        print(Path(stack["log"]).read_text()[-5000:])
        raise


def test_rtn_job_end_to_end(stack: dict[str, Any], s3_endpoint: str, tiny_llama_dir: Path) -> None:
    uri = upload_dir(s3_endpoint, MODEL_BUCKET, f"e2e-{uuid.uuid4().hex[:8]}", tiny_llama_dir)
    with PressoClient(stack["url"], stack["key"]) as client:
        job = client.submit({"model_uri": uri, "recipe": RTN, "evaluation": FAST_EVAL})
        seen: list[str] = []
        job = client.wait(job["id"], timeout=240, poll=0.3, on_update=lambda j: seen.append(j["state"]))
        assert job["state"] == "succeeded", (job, Path(stack["log"]).read_text()[-5000:])
        assert "running" in seen or "succeeded" in seen
        assert job["attempt"] == 1 and job["progress"]["fraction"] == 1.0 and job["metrics"]
        manifest = client.artifact(job["id"])
        assert all(f["url"].startswith(s3_endpoint) for f in manifest["files"])  # presigned
        assert manifest["expires_in_s"] and manifest["expires_in_s"] <= 3600
        out = stack["tmp"] / "artifact"
        files = client.download(job["id"], out)  # verifies every sha256
        assert len(files) == len(manifest["files"])
        report = client.http.get(f"/v1/jobs/{job['id']}/report").json()
        assert "layers" in report
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    # exactly one manifest for the job, under the winning attempt
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACT_BUCKET).get("Contents", [])
            if f"/jobs/{job['id']}/" in o["Key"] and o["Key"].endswith("manifest.json")]
    assert len(keys) == 1 and "/attempt-1/" in keys[0]


def test_hostile_model_fails_and_service_keeps_serving(stack: dict[str, Any], s3_endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    prefix = f"pickle-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=MODEL_BUCKET, Key=f"{prefix}/config.json", Body=b'{"model_type": "llama"}')
    s3.put_object(Bucket=MODEL_BUCKET, Key=f"{prefix}/pytorch_model.bin", Body=b"\x80\x04\x95" + b"\0" * 64)
    with PressoClient(stack["url"], stack["key"]) as client:
        bad = client.submit({"model_uri": f"s3://{MODEL_BUCKET}/{prefix}", "recipe": RTN})
        missing = client.submit({"model_uri": f"s3://{MODEL_BUCKET}/nothing-{uuid.uuid4().hex}", "recipe": RTN})
        bad = _wait(client, bad["id"], stack)
        missing = _wait(client, missing["id"], stack)
        assert bad["state"] == "failed" and bad["error"]["code"] == "unsafe_model"
        assert missing["state"] == "failed" and missing["error"]["code"] == "not_found"
        assert client.http.get("/readyz").status_code == 200
        assert client.get(bad["id"])["state"] == "failed"
