"""The runner on the real Postgres and S3 server: success, domain failures, infrastructure retries."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from svc_helpers import (
    MODEL_BUCKET,
    RTN,
    job_row,
    new_db_tenant,
    submit,
    upload_dir,
    worker_context,
)

from presso.workers.runner import run_job

FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}


@pytest.fixture
def tiny_uri(s3_endpoint: str, tiny_llama_dir: Path) -> str:
    return upload_dir(s3_endpoint, MODEL_BUCKET, f"tiny-{uuid.uuid4().hex[:8]}", tiny_llama_dir)


def _put(endpoint: str, key: str, data: bytes) -> None:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(
        Bucket=MODEL_BUCKET, Key=key, Body=data)


def test_success_uploads_files_then_manifest(make_settings: Any, tiny_uri: str) -> None:
    ctx = worker_context(make_settings())
    job_id = submit(ctx, new_db_tenant(ctx), {"model_uri": tiny_uri, "recipe": RTN, "evaluation": FAST_EVAL})
    assert run_job(job_id, ctx) == "succeeded"
    row = job_row(ctx, job_id)
    assert row.state == "succeeded" and row.attempt == 1
    assert row.progress_fraction == 1.0 and row.finished_at is not None
    assert row.manifest_key.endswith(f"/jobs/{job_id}/attempt-1/manifest.json")
    assert row.manifest_key.startswith(f"tenants/{row.tenant_id}/")
    manifest = json.loads(ctx.store.get_bytes(row.manifest_key))
    paths = {f["path"] for f in manifest["files"]}
    assert {"config.json", "presso.json", "report.json"} <= paths
    for entry in manifest["files"]:
        assert hashlib.sha256(ctx.store.get_bytes(entry["key"])).hexdigest() == entry["sha256"]
    assert row.metrics and "timings" in row.metrics
    # A redelivered message for a finished job is a no-op.
    assert run_job(job_id, ctx) == "skipped"
    assert job_row(ctx, job_id).attempt == 1


def _fails_with(ctx: Any, uri: str, *codes: str) -> Any:
    job_id = submit(ctx, new_db_tenant(ctx), {"model_uri": uri, "recipe": RTN, "evaluation": FAST_EVAL})
    assert run_job(job_id, ctx) == "failed"
    row = job_row(ctx, job_id)
    assert row.state == "failed"
    assert row.error_code in codes, (row.error_code, row.error_message)
    assert row.error_message
    assert row.attempt == 1  # domain errors are not retried
    return row


def test_missing_object_fails_cleanly(make_settings: Any) -> None:
    _fails_with(worker_context(make_settings()), f"s3://{MODEL_BUCKET}/does-not-exist-{uuid.uuid4().hex}",
                "not_found")


def test_pickle_weights_refused(make_settings: Any, s3_endpoint: str, tiny_llama_dir: Path) -> None:
    prefix = f"pickle-{uuid.uuid4().hex[:8]}"
    _put(s3_endpoint, f"{prefix}/config.json", (tiny_llama_dir / "config.json").read_bytes())
    _put(s3_endpoint, f"{prefix}/pytorch_model.bin", b"\x80\x04\x95" + b"\0" * 64)  # a pickle stream header
    row = _fails_with(worker_context(make_settings()), f"s3://{MODEL_BUCKET}/{prefix}", "unsafe_model")
    assert "pickle" in row.error_message.lower()


def test_truncated_safetensors_fails(make_settings: Any, s3_endpoint: str, tiny_llama_dir: Path) -> None:
    prefix = f"trunc-{uuid.uuid4().hex[:8]}"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        _put(s3_endpoint, f"{prefix}/{name}", (tiny_llama_dir / name).read_bytes())
    weights = (tiny_llama_dir / "model.safetensors").read_bytes()
    _put(s3_endpoint, f"{prefix}/model.safetensors", weights[: len(weights) // 2])
    _fails_with(worker_context(make_settings()), f"s3://{MODEL_BUCKET}/{prefix}", "model_load_error")


def test_oversize_model_fails(make_settings: Any, tiny_uri: str) -> None:
    _fails_with(worker_context(make_settings(max_model_bytes=100_000)), tiny_uri, "too_large", "model_too_large")


def test_unreachable_store_retries_then_gives_up(make_settings: Any, tiny_uri: str) -> None:
    settings = make_settings(store_url="s3://presso-no-such-bucket/x", max_attempts=2, retry_backoff_s=0)
    ctx = worker_context(settings)
    job_id = submit(ctx, new_db_tenant(ctx), {"model_uri": tiny_uri, "recipe": RTN, "evaluation": FAST_EVAL})
    assert run_job(job_id, ctx) == "retrying"
    row = job_row(ctx, job_id)
    assert row.state == "queued" and row.attempt == 1 and "NoSuchBucket" in row.error_message
    assert ctx.publisher.sent[-1][0] == job_id  # type: ignore[attr-defined]
    assert run_job(job_id, ctx) == "failed"
    row = job_row(ctx, job_id)
    assert row.state == "failed" and row.error_code == "max_attempts_exceeded" and row.attempt == 2


def test_default_group_size_falls_back_per_channel_through_the_service(make_settings: Any, tiny_uri: str) -> None:
    """The stored request keeps the recipe as given: the default group_size 128 on the tiny model's 64-wide
    layers falls back to per channel in the worker (it used to fail there as if the user had asked for 128)."""
    ctx = worker_context(make_settings())
    recipe = {"steps": [{"method": "rtn", "bits": 4}]}
    job_id = submit(ctx, new_db_tenant(ctx), {"model_uri": tiny_uri, "recipe": recipe, "evaluation": FAST_EVAL})
    assert job_row(ctx, job_id).request["recipe"] == recipe
    assert run_job(job_id, ctx) == "succeeded", job_row(ctx, job_id).error_message
    explicit = {"steps": [{"method": "rtn", "bits": 4, "group_size": 128}]}
    job_id = submit(ctx, new_db_tenant(ctx), {"model_uri": tiny_uri, "recipe": explicit, "evaluation": FAST_EVAL})
    assert run_job(job_id, ctx) == "failed"
    row = job_row(ctx, job_id)
    assert (row.error_code, row.attempt) == ("invalid_recipe", 1) and "larger than the input width" in row.error_message


def test_stored_recipe_invalid_under_current_rules_fails_without_retry(make_settings: Any, tiny_uri: str) -> None:
    """A row queued under looser rules (17 steps): invalid_recipe at once, not an infrastructure retry."""
    from presso.app.jobs.models import Job

    ctx = worker_context(make_settings())
    job_id = submit(ctx, new_db_tenant(ctx), {"model_uri": tiny_uri, "recipe": RTN, "evaluation": FAST_EVAL})
    with ctx.session_factory() as session:
        job = session.get(Job, job_id)
        job.request = {**job.request, "recipe": {"steps": [{"method": "rtn"}] * 17}}
        session.commit()
    assert run_job(job_id, ctx) == "failed"
    row = job_row(ctx, job_id)
    assert (row.error_code, row.attempt) == ("invalid_recipe", 1)
    assert "at most 16 steps" in row.error_message
