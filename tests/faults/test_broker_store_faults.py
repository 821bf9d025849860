"""Broker, API and S3 faults against the real services, with random timing per seed.

- Redis killed -9 and restarted empty, or FLUSHDB, with jobs queued: the reaper republishes from Postgres.
- The API dies between commit and publish (and a submit while the broker is down): republished.
- One message delivered twice (concurrently and after the end): exactly one execution publishes.
- The S3 server goes away in the middle of an upload: the attempt retries, only one manifest is published.
- A byte flipped in a stored artifact: `presso download` refuses it with checksum_mismatch.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faultkit import ROOT, STAGE_DELAY_S, Cluster, publisher_for
from svc_helpers import ARTIFACT_BUCKET, RTN, free_port, serve_api

from presso.app.tenants.service import create_key

BODY_EVAL = {"windows": 2, "seq_len": 32, "latency": False}


@pytest.mark.parametrize(("fault", "seed"), [("restart", 1), ("flushdb", 2), ("restart", 3)])
def test_redis_lost_with_jobs_queued(cluster: Cluster, fault: str, seed: int) -> None:
    rng = random.Random(seed)
    ids = [cluster.submit() for _ in range(5)]  # two run, three wait in Redis
    time.sleep(rng.uniform(0.0, 2.0))  # < 3 stage pauses: no job can have finished, so three still wait
    import redis

    client = redis.Redis.from_url(cluster.redis.url)
    queued_messages = sum(client.llen(q) for q in ("gpu", "cpu"))
    client.close()
    if fault == "restart":
        cluster.redis.restart()  # no persistence: every message and unacked delivery is gone
    else:
        client = redis.Redis.from_url(cluster.redis.url)
        client.flushdb()
        client.close()
    assert queued_messages >= 1  # the fault really dropped waiting messages
    cluster.wait_terminal(ids, timeout=180)
    cluster.check_invariants(ids)
    assert all(w.alive() for w in cluster.workers)


class Crash(BaseException):
    """Stands for the API process dying (kill -9) right after its commit: nothing after it runs."""


class CrashingPublisher:
    def publish(self, job_id: str, queue: str, *, countdown: float = 0) -> None:
        raise Crash(job_id)


def test_api_dies_between_commit_and_publish(cluster: Cluster) -> None:
    crashed: list[str] = []
    try:
        cluster.submit(publisher=CrashingPublisher())
    except Crash as exc:
        crashed.append(str(exc))
    assert len(crashed) == 1
    row = cluster.row(crashed[0])
    assert row.state == "queued" and row.last_published_at is None  # committed, never sent
    # The same through HTTP while the broker is unreachable: 202, the job is kept and sent later.
    from fastapi.testclient import TestClient

    from presso.app.main import create_app

    dead = cluster.settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with cluster.ctx.session_factory() as session:
        _, key = create_key(session=session, tenant_id=cluster.tenant.id, name="faults")
    with TestClient(create_app(dead)) as client:
        resp = client.post("/v1/jobs", headers={"Authorization": f"Bearer {key}"},
                           json={"model_uri": cluster.model_uri, "recipe": RTN, "evaluation": BODY_EVAL,
                                 "force": True})
    assert resp.status_code == 202, resp.text
    ids = [crashed[0], resp.json()["id"]]
    assert cluster.row(ids[1]).last_published_at is None
    cluster.wait_terminal(ids, timeout=120)  # the reaper republishes after its 10 s grace
    cluster.check_invariants(ids)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_message_delivered_twice(cluster: Cluster, seed: int) -> None:
    rng = random.Random(seed)
    job_id = cluster.submit()
    time.sleep(rng.uniform(0.0, 3 * STAGE_DELAY_S))
    publisher = publisher_for(cluster.settings)
    publisher.publish(job_id, "gpu")  # the duplicate: a redelivery while the first copy may be running
    row = cluster.wait_terminal([job_id])[job_id]
    publisher.publish(job_id, "gpu")  # and once more after the end: must be a no-op
    # Three messages, one execution: wait until both other copies were consumed (found nothing to claim).
    cluster.wait_log(f"job {job_id} is not queued; nothing to do", 2)
    rows = cluster.check_invariants([job_id])
    assert row.attempt == 1 and rows[job_id].attempt == 1  # exactly one execution claimed the job
    assert rows[job_id].manifest_key == row.manifest_key and rows[job_id].finished_at == row.finished_at


@pytest.mark.parametrize("seed", [1, 2])
def test_s3_outage_mid_upload(cluster: Cluster, seed: int) -> None:
    rng = random.Random(seed)
    job_id = cluster.submit()
    cluster.wait_marker(job_id, "upload")  # first artifact file stored, the rest not yet
    time.sleep(rng.uniform(0.0, 0.5 * STAGE_DELAY_S))
    cluster.s3.stop()
    time.sleep(rng.uniform(2.0, 6.0))
    cluster.s3.start()
    row = cluster.wait_terminal([job_id], timeout=180)[job_id]
    cluster.check_invariants([job_id])
    attempts = {k.split("/attempt-")[1].split("/")[0] for k in cluster.job_objects(row)}
    # Attempts that lost the race left at most partial files, never a manifest (checked above).
    assert str(row.attempt) in attempts


# -- a flipped byte ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_url(cluster: Cluster) -> Iterator[str]:
    with serve_api(cluster.settings) as url:
        yield url


def _download(api_url: str, key: str, job_id: str, out: Path) -> Any:
    return subprocess.run([sys.executable, "-m", "presso.cli", "download", job_id, str(out), "--server", api_url,
                           "--api-key", key], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("seed", [1, 2])
def test_flipped_byte_detected_by_download(cluster: Cluster, api_url: str, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    job_id = cluster.submit()
    row = cluster.wait_terminal([job_id])[job_id]
    cluster.check_invariants([job_id])
    with cluster.ctx.session_factory() as session:
        _, key = create_key(session=session, tenant_id=cluster.tenant.id, name="faults")
    ok = _download(api_url, key, job_id, tmp_path / "good")
    assert ok.returncode == 0, ok.stderr
    manifest = httpx.get(f"{api_url}/v1/jobs/{job_id}/artifact", headers={"Authorization": f"Bearer {key}"}).json()
    entry = rng.choice([f for f in manifest["files"] if f["size"] > 0])
    stored = f"{cluster.store_prefix}/tenants/{row.tenant_id}/jobs/{job_id}/attempt-{row.attempt}/{entry['path']}"
    s3 = cluster.s3_client()
    data = bytearray(s3.get_object(Bucket=ARTIFACT_BUCKET, Key=stored)["Body"].read())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    s3.put_object(Bucket=ARTIFACT_BUCKET, Key=stored, Body=bytes(data))
    out = tmp_path / f"bad-{uuid.uuid4().hex[:6]}"
    bad = _download(api_url, key, job_id, out)
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert "checksum_mismatch" in bad.stderr and entry["path"] in bad.stderr, bad.stderr
    assert not (out / entry["path"]).exists()  # the corrupt file is not left behind
