"""The worker's model cache (PRESSO_MODEL_CACHE_DIR): build_spec's progress and two jobs of one model on the real
Postgres and S3 server, the second fetching nothing."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from svc_helpers import MODEL_BUCKET, RTN, job_row, new_db_tenant, submit, upload_dir, worker_context

from presso.app.jobs.models import JobLog
from presso.workers.lease import Claim
from presso.workers.runner import run_job
from presso.workers.spec import build_spec, model_cache

FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}


@pytest.fixture
def tiny_uri(s3_endpoint: str, tiny_llama_dir: Path) -> str:
    return upload_dir(s3_endpoint, MODEL_BUCKET, f"tiny-{uuid.uuid4().hex[:8]}", tiny_llama_dir)


def test_cache_is_off_unless_configured(make_settings: Any, tmp_path: Path) -> None:
    assert model_cache(make_settings()) is None
    assert model_cache(make_settings(model_cache_dir=tmp_path / "c", model_cache_gb=0)) is None
    cache = model_cache(make_settings(model_cache_dir=tmp_path / "c", model_cache_gb=0.5))
    assert cache is not None and cache.quota_bytes == 2**29 and cache.verify == "sample"


def test_build_spec_reports_a_cache_hit(make_settings: Any, tiny_uri: str, tmp_path: Path) -> None:
    settings = make_settings(model_cache_dir=tmp_path / "cache", model_cache_gb=1)
    stages: list[list[tuple[str, float]]] = []
    for run in ("a", "b"):
        claim = Claim(job_id=run, tenant_id="t", attempt=1, max_attempts=1, queue="cpu", model_uri=tiny_uri,
                      request={"model_uri": tiny_uri, "recipe": RTN})
        (tmp_path / run).mkdir()
        seen: list[tuple[str, float]] = []
        build_spec(claim, settings, tmp_path / run, progress=lambda s, f, seen=seen: seen.append((s, f)))
        stages.append(seen)
    assert ("fetch", 0.5) in stages[0] and ("fetch:cache hit", 0.5) in stages[1]
    a, b = (tmp_path / run / "model" / "model.safetensors" for run in ("a", "b"))
    assert os.path.samefile(a, b)


def test_second_job_of_a_model_fetches_nothing(make_settings: Any, tiny_uri: str, tmp_path: Path) -> None:
    ctx = worker_context(make_settings(model_cache_dir=tmp_path / "cache", model_cache_gb=1))
    tenant = new_db_tenant(ctx)
    jobs = [submit(ctx, tenant, {"model_uri": tiny_uri, "recipe": RTN, "evaluation": FAST_EVAL, "force": True})
            for _ in range(2)]
    for job_id in jobs:
        assert run_job(job_id, ctx) == "succeeded"
        assert job_row(ctx, job_id).state == "succeeded"
    with ctx.session_factory() as session:
        logs = [list(session.scalars(select(JobLog.message).where(JobLog.job_id == j))) for j in jobs]
    assert any("model cache miss" in line for line in logs[0])
    assert any("model cache hit" in line for line in logs[1])
    assert not any("model cache miss" in line for line in logs[1])
