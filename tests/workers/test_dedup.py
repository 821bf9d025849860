"""Dedup on the real Postgres and S3 server with the real runner: the same inputs (by content) return the first
job's artifact without compressing; a changed model, another recipe, another tenant or force: true run again."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from svc_helpers import MODEL_BUCKET, RTN, job_row, new_db_tenant, submit, upload_dir, worker_context

from presso.app.jobs.service import to_public
from presso.workers.dedup import dedup_key
from presso.workers.runner import run_job

FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}


@pytest.fixture
def ctx(make_settings: Any) -> Any:
    return worker_context(make_settings())


def _upload(s3_endpoint: str, src: Path) -> str:
    return upload_dir(s3_endpoint, MODEL_BUCKET, f"dedup-{uuid.uuid4().hex[:8]}", src)


def test_same_inputs_reuse_the_artifact(ctx: Any, s3_endpoint: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    tenant = new_db_tenant(ctx)
    body = {"model_uri": _upload(s3_endpoint, tiny_llama_dir), "recipe": RTN, "evaluation": FAST_EVAL}
    first = submit(ctx, tenant, body)
    assert run_job(first, ctx) == "succeeded"
    a = job_row(ctx, first)
    assert a.dedup_key and len(a.dedup_key) == 64 and a.dedup_of is None

    # the same bytes under another URI: the same key
    second = submit(ctx, tenant, {**body, "model_uri": _upload(s3_endpoint, tiny_llama_dir), "name": "again"})
    assert run_job(second, ctx) == "succeeded"
    b = job_row(ctx, second)
    assert b.dedup_of == first and b.dedup_key == a.dedup_key and b.manifest_key == a.manifest_key
    assert b.metrics["dedup"] == {"of": first}
    assert to_public(b).deduplicated_from == first and to_public(b).state == "succeeded"
    assert b.metrics["timings"] == a.metrics["timings"]  # the first job's measurements, not a new run
    manifest = json.loads(ctx.store.get_bytes(b.manifest_key))
    for entry in manifest["files"]:  # the artifact is there and intact
        assert hashlib.sha256(ctx.store.get_bytes(entry["key"])).hexdigest() == entry["sha256"]

    forced = submit(ctx, tenant, {**body, "force": True})
    assert run_job(forced, ctx) == "succeeded"
    c = job_row(ctx, forced)
    assert c.dedup_of is None and c.manifest_key != a.manifest_key and c.dedup_key == a.dedup_key

    other_recipe = submit(ctx, tenant, {**body, "recipe": {"steps": [{"method": "rtn", "bits": 8, "group_size": 32}]}})
    assert run_job(other_recipe, ctx) == "succeeded"
    assert job_row(ctx, other_recipe).dedup_of is None

    other_tenant = submit(ctx, new_db_tenant(ctx), body)
    assert run_job(other_tenant, ctx) == "succeeded"
    assert job_row(ctx, other_tenant).dedup_of is None  # tenants never share artifacts

    changed = tmp_path / "changed"
    shutil.copytree(tiny_llama_dir, changed)
    config = json.loads((changed / "config.json").read_text())
    config["presso_test_marker"] = uuid.uuid4().hex  # a fetched file with other bytes: another key
    (changed / "config.json").write_text(json.dumps(config))
    new_model = submit(ctx, tenant, {**body, "model_uri": _upload(s3_endpoint, changed)})
    assert run_job(new_model, ctx) == "succeeded"
    assert job_row(ctx, new_model).dedup_of is None and job_row(ctx, new_model).dedup_key != a.dedup_key


def test_key_ignores_uris_and_reads_content(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"abc")
    data = tmp_path / "eval.txt"
    data.write_text("hello")
    req = {"model_uri": "s3://a/m", "recipe": RTN, "evaluation": {"uri": "s3://a/e", "windows": 2}}
    key = dedup_key(req, model, None, data)
    assert key == dedup_key({**req, "model_uri": "hf://x/y", "evaluation": {"uri": "https://e", "windows": 2}},
                            model, None, data)
    assert key == dedup_key({**req, "force": True}, model, None, data)
    assert key != dedup_key({**req, "evaluation": {"uri": "s3://a/e", "windows": 3}}, model, None, data)
    data.write_text("hello!")
    assert key != dedup_key(req, model, None, data)
    data.write_text("hello")
    (model / "w.safetensors").write_bytes(b"abd")
    assert key != dedup_key(req, model, None, data)
