"""Issue 21 over the API: a streamed job (``"streaming": "on"``) through the real services (the uvicorn API, two
Celery worker processes, Postgres, Redis, the moto S3 server), no mocks.

The model: a random 4-block Llama stored as 2+ safetensors shards in S3; GPTQ W4 with calibration token ids from
S3; evaluation off (streaming needs it). Output shards are small (``PRESSO_SHARD_BYTES``), so the artifact has
several, and the worker uploads each in the background as soon as it is closed. The stage pause of
workers/testhooks.py holds each attempt for a moment once block 0 is written and checkpointed, so the upload of
the shards closed by then happens while the job is still compressing.

- the streamed artifact, downloaded through the API, is the in-memory job's (``"streaming": "off"``) byte for
  byte (every file but presso.json and report.json, which hold timings), and loads with transformers; shards
  were uploaded before compression ended (metrics.shard_uploads) and the manifest names their background keys;
- a streamed job whose worker is SIGKILLed during that pause resumes on the other worker at block 1 from the
  stored checkpoint, with the same bytes; the killed attempt's early shards are never published.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from faultkit import Cluster
from svc_helpers import ADMIN_KEY, MODEL_BUCKET, serve_api, upload_dir, write_tiny_llama

from presso.client import PressoClient

CLUSTER_ENV = {"PRESSO_SHARD_BYTES": "30000", "PRESSO_TEST_STAGE_DELAY": "compress=3"}
GPTQ = {"steps": [{"method": "gptq", "bits": 4, "group_size": 32}]}
TIMED = ("presso.json", "report.json")


def _sharded_llama(dest: Path, layers: int = 4) -> Path:
    """write_tiny_llama's model and tokenizer with ``layers`` blocks, saved as several safetensors shards."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    base = write_tiny_llama(dest.parent / f"{dest.name}-base")
    config = AutoConfig.from_pretrained(base)
    config.num_hidden_layers = layers
    torch.manual_seed(7)
    LlamaForCausalLM(config).eval().save_pretrained(dest, safe_serialization=True, max_shard_size="100KB")
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, dest / f.name)
    assert len(list(dest.glob("*.safetensors"))) >= 2
    return dest


@pytest.fixture(scope="module")
def api(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The API over HTTP, a tenant's key, and a job body for the sharded model (model and calibration in S3)."""
    tmp = tmp_path_factory.mktemp("streamed")
    model = _sharded_llama(tmp / "llama4")
    prefix = f"streamed-{uuid.uuid4().hex[:8]}"
    model_uri = upload_dir(cluster.s3.url, MODEL_BUCKET, f"{prefix}/model", model)
    calib = tmp / "calib" / "ids.npy"
    calib.parent.mkdir()
    np.save(calib, np.random.default_rng(3).integers(0, 250, size=8 * 32).astype(np.int64))
    calib_uri = upload_dir(cluster.s3.url, MODEL_BUCKET, f"{prefix}/calib", calib.parent) + "/ids.npy"
    body = {"model_uri": model_uri, "recipe": GPTQ, "force": True, "evaluation": {"enabled": False},
            "calibration": {"samples": 8, "seq_len": 32, "uri": calib_uri}}
    with serve_api(cluster.settings) as url:
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        tenant = admin.post("/v1/admin/tenants", json={"name": f"streamed-{uuid.uuid4().hex[:8]}"}).json()
        key = admin.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={"name": "e2e"}).json()["secret"]
        with PressoClient(url, key) as client:
            yield {"client": client, "body": body, "tmp": tmp}


@pytest.fixture(scope="module")
def in_memory(api: dict[str, Any], cluster: Cluster) -> dict[str, str]:
    """The same job run in memory: the digests of its downloaded files."""
    client = api["client"]
    job = client.submit({**api["body"], "streaming": "off"})
    job = client.wait(job["id"], timeout=240, poll=0.3)
    assert job["state"] == "succeeded", (job, cluster.logs_tail())
    assert not job["metrics"].get("streamed") and "shard_uploads" not in job["metrics"]
    return _download(client, job["id"], api["tmp"] / "in-memory")


def _download(client: PressoClient, job_id: str, out: Path) -> dict[str, str]:
    client.download(job_id, out)  # checks every sha256 against the manifest
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.is_file() and p.name not in TIMED}


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _manifest(cluster: Cluster, key: str) -> dict[str, Any]:
    obj = cluster.s3_client().get_object(Bucket="presso-test-artifacts", Key=f"{cluster.store_prefix}/{key}")
    return json.loads(obj["Body"].read())


def test_streamed_job_over_the_api(api: dict[str, Any], in_memory: dict[str, str], cluster: Cluster) -> None:
    from transformers import AutoModelForCausalLM

    client = api["client"]
    job = client.submit({**api["body"], "streaming": "on"})
    job = client.wait(job["id"], timeout=240, poll=0.3)
    assert job["state"] == "succeeded", (job, cluster.logs_tail())
    metrics = job["metrics"]
    assert metrics["streamed"] is True
    uploads = metrics["shard_uploads"]
    shards = [f for f in uploads["files"] if f["path"].endswith(".safetensors")]
    assert len(shards) >= 3 and len(shards) == len(uploads["files"])
    compressed_at, finished_at = _at(uploads["compressed_at"]), job["finished_at"]
    # the shards closed before the pause after block 0 were stored while blocks 1-3 were still to compute
    early = [f for f in shards if _at(f["uploaded_at"]) < compressed_at]
    assert early, uploads
    assert all(_at(f["uploaded_at"]) <= _at(str(finished_at)) for f in shards)

    got = _download(client, job["id"], api["tmp"] / "streamed")
    assert got == in_memory  # same files, same bytes: shards, index, config, tokenizer
    assert len([n for n in got if n.endswith(".safetensors")]) == len(shards)
    row = cluster.check_invariants([job["id"]])[job["id"]]
    manifest = {e["path"]: e["key"] for e in _manifest(cluster, row.manifest_key)["files"]}
    assert all("/shards/" in manifest[f["path"]] for f in shards)  # the background uploads, not uploaded twice
    model = AutoModelForCausalLM.from_pretrained(api["tmp"] / "streamed")
    assert model.config.num_hidden_layers == 4


def test_killed_streamed_job_resumes_on_another_worker(api: dict[str, Any], in_memory: dict[str, str],
                                                       cluster: Cluster) -> None:
    client = api["client"]
    job_id = client.submit({**api["body"], "streaming": "on"})["id"]
    pid = cluster.wait_marker(job_id, "compress")  # attempt 1 paused after block 0 (written, checkpointing)
    row = cluster.row(job_id)
    # block 0's activations and state.json, and the shards closed so far, are uploaded in the background:
    # both must be in the store within the 3 s pause
    deadline = time.monotonic() + 2.5

    def stored() -> tuple[bool, bool, list[str]]:
        objects = cluster.job_objects(row)
        return (any(k.endswith("/attempt-1/resume/state.json") for k in objects),
                any("/attempt-1/shards/" in k for k in objects), objects)

    state, shards, objects = stored()
    while not (state and shards) and time.monotonic() < deadline:
        time.sleep(0.05)
        state, shards, objects = stored()
    assert state and shards, objects
    cluster.worker_of(pid).kill9()
    cluster.start_worker()
    job = client.wait(job_id, timeout=240, poll=0.3)
    assert job["state"] == "succeeded" and job["attempt"] >= 2, (job, cluster.logs_tail())
    assert cluster.log_count("resuming at block 1/4") >= 1, cluster.logs_tail()
    assert _download(client, job_id, api["tmp"] / "resumed") == in_memory
    row = cluster.check_invariants([job_id])[job_id]
    objects = cluster.job_objects(row)
    assert not any("/attempt-1/" in k and k.endswith("/manifest.json") for k in objects)
    assert job["metrics"]["shard_uploads"]["files"]
    cluster.wait_ready(cluster.live_workers())  # two workers for whatever runs next
