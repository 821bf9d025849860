"""Observability: /metrics aggregated across API processes (Prometheus multiprocess mode, `presso api --workers 2`
as a user runs it), job metrics from the database (states, queue depth, duration histograms, failures by code,
worker heartbeats), and JSON log lines carrying the job id and the tenant."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from svc_helpers import ADMIN_KEY, ARTIFACT_BUCKET, RTN, new_db_tenant, presso_process, submit, worker_context

from presso.app.core import logs
from presso.app.jobs.models import Job

ROOT = Path(__file__).resolve().parents[2]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(text: str, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples(text).items()
               if n == name and all(dict(ls).get(k) == val for k, val in labels.items()))


def test_http_metrics_are_aggregated_across_api_processes(pg_url: str, redis_url: str, s3_endpoint: str,
                                                          tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRESSO_", "PROMETHEUS_"))}
    env.update({"PRESSO_DATABASE_URL": pg_url, "PRESSO_BROKER_URL": redis_url,
                "PRESSO_BROKER_KEY_PREFIX": f"presso-obs-{uuid.uuid4().hex[:8]}:",
                "PRESSO_STORE_URL": f"s3://{ARTIFACT_BUCKET}/obs", "PRESSO_S3_ENDPOINT_URL": s3_endpoint,
                "PRESSO_ADMIN_KEY": ADMIN_KEY, "PRESSO_DATA_DIR": str(tmp_path / "data"),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "OMP_NUM_THREADS": "1",
                "PRESSO_LOG_FORMAT": "json"})
    with presso_process(["api", "--workers", "2"], env, tmp_path / "api.log", ready="/healthz",
                        timeout=90) as (_proc, url):
        n = 40
        for _ in range(n):  # new connections: the kernel spreads them over both processes
            with httpx.Client(base_url=url) as c:
                assert c.get("/healthz").status_code == 200
        for _ in range(6):
            with httpx.Client(base_url=url) as c:
                text = c.get("/metrics").text
                got = total(text, "presso_http_requests_total", route="/healthz")
                assert got >= n + 1 - 1e-9, got  # every process's requests, whichever process answers
        pids = {p.name for p in (tmp_path / "prom").glob("*.db")}
        assert len({name.rsplit("_", 1)[-1] for name in pids}) >= 2, pids  # two processes wrote samples
    # PRESSO_LOG_FORMAT=json: every line uvicorn wrote, access lines included, is one JSON object
    lines = [line for line in (tmp_path / "api.log").read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert sum(1 for x in parsed if x["logger"] == "uvicorn.access") >= n


def test_job_metrics_from_the_database(make_settings: Any, app_client: Any, s3_endpoint: str,
                                       tiny_llama_dir: Path) -> None:
    from svc_helpers import MODEL_BUCKET, upload_dir

    from presso.workers.runner import run_job

    before = app_client.get("/metrics").text
    ctx = worker_context(make_settings())
    tenant = new_db_tenant(ctx)
    uri = upload_dir(s3_endpoint, MODEL_BUCKET, f"obs-{uuid.uuid4().hex[:8]}", tiny_llama_dir)
    good = submit(ctx, tenant, {"model_uri": uri, "recipe": RTN,
                                "evaluation": {"windows": 2, "seq_len": 32, "latency": False}, "force": True})
    bad = submit(ctx, tenant, {"model_uri": f"s3://{MODEL_BUCKET}/missing-{uuid.uuid4().hex}", "recipe": RTN})
    waiting = submit(ctx, tenant, {"model_uri": uri, "recipe": RTN})
    mid = app_client.get("/metrics").text
    assert total(mid, "presso_jobs", state="queued") == total(before, "presso_jobs", state="queued") + 3
    assert total(mid, "presso_queue_depth", queue="gpu") >= 3
    assert run_job(good, ctx) == "succeeded" and run_job(bad, ctx) == "failed"
    after = app_client.get("/metrics").text
    assert total(after, "presso_jobs", state="succeeded") == total(before, "presso_jobs", state="succeeded") + 1
    assert total(after, "presso_jobs", state="failed") == total(before, "presso_jobs", state="failed") + 1
    assert total(after, "presso_jobs", state="queued") == total(before, "presso_jobs", state="queued") + 1
    with ctx.session_factory() as session:
        code = session.get(Job, bad).error_code
    assert total(after, "presso_job_failures_total", code=code) == total(before, "presso_job_failures_total",
                                                                          code=code) + 1
    name = "presso_job_duration_seconds"
    for outcome in ("succeeded", "failed"):
        grew = total(after, f"{name}_count", queue="gpu", outcome=outcome) - total(
            before, f"{name}_count", queue="gpu", outcome=outcome)
        assert grew == 1, outcome
    buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in samples(after).items()
                      if n == f"{name}_bucket" and dict(ls).get("outcome") == "succeeded"), key=lambda x: x[0])
    values = [v for _, v in buckets]
    assert values == sorted(values) and values[-1] == total(after, f"{name}_count", outcome="succeeded")
    assert total(after, f"{name}_sum", outcome="succeeded") > 0
    assert total(after, "presso_job_queue_wait_seconds_count") >= 2
    for stage in ("load", "compress", "evaluate", "total"):  # the worker's stage timings of the good job
        grew = total(after, "presso_job_stage_seconds_count", stage=stage) - total(
            before, "presso_job_stage_seconds_count", stage=stage)
        assert grew == 1, stage
    assert total(after, "presso_job_stage_seconds_sum", stage="total") > total(
        before, "presso_job_stage_seconds_sum", stage="total")
    assert ("presso_workers", ()) in samples(after)
    del waiting


def test_json_log_lines_carry_job_and_tenant(make_settings: Any) -> None:
    from presso.workers.runner import run_job

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.install(handler, "json")
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        ctx = worker_context(make_settings())
        tenant = new_db_tenant(ctx)
        job_id = submit(ctx, tenant, {"model_uri": "s3://presso-test-models/none", "recipe": RTN})
        run_job(job_id, ctx)
        logging.getLogger("presso.test").info("outside any job")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [x for x in lines if x.get("job_id") == job_id]
    assert len(mine) >= 2 and all(x["tenant_id"] == tenant.id for x in mine)
    assert any("started" in x["message"] for x in mine)
    assert {"ts", "level", "logger", "message"} <= set(mine[0])
    assert any("failed" in x["message"] for x in mine)
    assert "job_id" not in lines[-1] and lines[-1]["message"] == "outside any job"
