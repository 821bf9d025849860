"""Background uploads of a streamed job's shards (presso.workers.shardupload): an upload error is the job's failure
reason and nothing is published; the manifest names a background upload only for the same file or the same bytes.
The API-level test with the real services is tests/faults/test_streamed_jobs.py."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from svc_helpers import MODEL_BUCKET, RTN, job_row, new_db_tenant, submit, upload_dir, worker_context

from presso.app.jobs.artifacts import attempt_prefix
from presso.app.storage.local import LocalStore
from presso.compression.io import artifact
from presso.workers.lease import Claim
from presso.workers.runner import run_job
from presso.workers.shardupload import ShardUploadFailed, ShardUploads

CLAIM = Claim(job_id="job-1", tenant_id="t-1", attempt=1, max_attempts=3, queue="q", model_uri="file:///m", request={})


class RefusesShards:
    """The service's store, except that every background shard upload fails as a reset connection would."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> None:
        if "/shards/" in key:
            raise ConnectionResetError("connection reset by the S3 endpoint")
        self.store.put_file(key, path, sha256=sha256)


def test_background_upload_error_is_the_jobs_failure_reason(make_settings: Any, s3_endpoint: str,
                                                              tiny_llama_dir: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(artifact, "SHARD_BYTES", 30_000)  # several shards from the tiny model
    ctx = worker_context(make_settings(max_attempts=1))
    ctx.store = RefusesShards(ctx.store)
    uri = upload_dir(s3_endpoint, MODEL_BUCKET, f"tiny-{uuid.uuid4().hex[:8]}", tiny_llama_dir)
    job_id = submit(ctx, new_db_tenant(ctx), {"model_uri": uri, "recipe": RTN, "streaming": "on",
                                              "evaluation": {"enabled": False}})
    assert run_job(job_id, ctx) == "failed"
    row = job_row(ctx, job_id)
    assert row.error_code == "max_attempts_exceeded"
    assert "ShardUploadFailed" in row.error_message and "ConnectionResetError" in row.error_message, row.error_message
    assert not ctx.store.exists(f"{attempt_prefix(row.tenant_id, job_id, 1)}/manifest.json")


def test_manifest_reuses_a_background_upload_only_for_the_same_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    shard = tmp_path / "out" / ".shard-00000.safetensors"
    shard.parent.mkdir()
    shard.write_bytes(b"shard bytes" * 1000)
    with ShardUploads(store, CLAIM, tmp_path / "work") as uploads:
        uploads(shard)
        [up] = uploads.wait()
        final = shard.with_name("model-00001-of-00002.safetensors")
        shard.rename(final)  # as the library does at finish: the same file
        assert uploads.match(final, final.name) == up
        copy = tmp_path / "copy.safetensors"
        shutil.copy(final, copy)
        assert uploads.match(copy, "copy") is None  # another file: only with its sha256
        assert uploads.match(copy, "copy", up.sha256) == up
        assert store.get_bytes(up.key) == final.read_bytes()
        assert up.key == f"{attempt_prefix('t-1', 'job-1', 1)}/shards/00000.safetensors"
    assert not (tmp_path / "work" / ".shard-uploads").exists()


def test_an_upload_error_is_raised_at_the_next_shard(tmp_path: Path) -> None:
    store = RefusesShards(LocalStore(tmp_path / "store"))
    first = tmp_path / "a.safetensors"
    first.write_bytes(b"x" * 10)
    with ShardUploads(store, CLAIM, tmp_path / "work") as uploads:
        uploads(first)
        with pytest.raises(ShardUploadFailed, match="shard 0"):
            uploads.wait()
        with pytest.raises(ShardUploadFailed, match="ConnectionResetError"):
            uploads(first)
