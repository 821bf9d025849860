"""POST /v1/plan, GET /v1/jobs/{id}/plan, the insufficient_resources refusal at submit and before the fetch."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from svc_helpers import MODEL_BUCKET, RTN, new_tenant, upload_dir, worker_context

from presso.app.jobs.models import Job
from presso.app.main import create_app

TINY_CLASS = [{"name": "tiny", "host_memory_gb": 0.001, "disk_gb": 100}]
BIG_CLASS = [{"name": "big", "gpus": 1, "gpu_memory_gb": 80, "host_memory_gb": 512, "disk_gb": 1000}]


@pytest.fixture
def model_dir(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "tiny"))  # under the allowed file root (tmp_path)


@pytest.fixture
def s3_model(s3_endpoint: str, tiny_llama_dir: Path) -> str:
    return upload_dir(s3_endpoint, MODEL_BUCKET, f"plan-{uuid.uuid4().hex[:8]}", tiny_llama_dir)


@pytest.fixture
def client_for(make_settings: Any) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> Any:
        client = TestClient(create_app(make_settings(**overrides)))
        clients.append(client.__enter__())
        return new_tenant(client)

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _body(uri: str) -> dict[str, Any]:
    return {"model_uri": uri, "recipe": RTN, "evaluation": {"windows": 2, "seq_len": 32}}


def test_dry_run_plans_a_local_model(client_for: Any, model_dir: Path) -> None:
    api = client_for()  # worker classes: this machine
    resp = api.post("/v1/plan", json=_body(model_dir.as_uri()))
    assert resp.status_code == 200, resp.text
    plan = resp.json()
    assert plan["status"] == "planned" and plan["refusal"] is None and plan["runnable_on"] == ["local"]
    assert plan["model"]["layers"] == 2 and plan["model"]["hidden_size"] == 64
    (est,) = plan["estimates"]
    assert est["worker_class"] == "local" and est["fits"]
    assert {p["name"] for p in est["phases"]} == {"load", "data", "compress", "evaluate", "write"}
    assert est["host_memory_bytes"] > 1e9 and est["disk_bytes"] > 0 and est["wall_s"] > 0


def test_submit_refuses_a_job_no_worker_class_can_run(client_for: Any, model_dir: Path) -> None:
    api = client_for(worker_classes=TINY_CLASS + [{"name": "small-gpu", "gpus": 1, "gpu_memory_gb": 0.5}])
    resp = api.post("/v1/jobs", json=_body(model_dir.as_uri()))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "insufficient_resources" and error["field"] == "model_uri"
    assert "tiny: host memory: needs 1.0 GB in " in error["message"] and "has 0.001 GB" in error["message"]
    assert "small-gpu: GPU memory: needs 1.5 GB on one GPU" in error["message"]
    # the dry run says the same, with 200
    plan = api.post("/v1/plan", json=_body(model_dir.as_uri())).json()
    assert plan["runnable_on"] == [] and plan["refusal"] == error["message"]


def test_submitted_job_keeps_its_plan(client_for: Any, model_dir: Path) -> None:
    api = client_for(worker_classes=BIG_CLASS)
    resp = api.post("/v1/jobs", json=_body(model_dir.as_uri()))
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    plan = api.get(f"/v1/jobs/{job_id}/plan").json()
    assert plan["status"] == "planned" and plan["runnable_on"] == ["big"]
    other = new_tenant(api.client)
    assert other.get(f"/v1/jobs/{job_id}/plan").status_code == 404


def test_remote_models_are_planned_by_ranged_reads(client_for: Any, s3_model: str) -> None:
    api = client_for(worker_classes=TINY_CLASS)  # plan_at_submit "local": s3:// is not read at submit
    resp = api.post("/v1/jobs", json=_body(s3_model))
    assert resp.status_code == 202, resp.text
    plan = api.get(f"/v1/jobs/{resp.json()['id']}/plan").json()  # planned now, through the S3 client
    assert plan["status"] == "planned" and plan["runnable_on"] == [] and plan["model"]["layers"] == 2
    strict = client_for(worker_classes=TINY_CLASS, plan_at_submit="remote")
    resp = strict.post("/v1/jobs", json=_body(s3_model))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "insufficient_resources"
    unknown = api.post("/v1/plan", json=_body("hf://org/model")).json()
    assert unknown["status"] == "unknown" and "hf://" in unknown["reason"]
    missing = api.post("/v1/plan", json=_body(s3_model + "-missing")).json()
    assert missing["status"] == "unknown" and missing["reason"].startswith("not_found")


def test_worker_refuses_before_the_fetch(client_for: Any, make_settings: Any, s3_model: str) -> None:
    from presso.workers import runner

    api = client_for(worker_classes=TINY_CLASS)
    job_id = api.post("/v1/jobs", json=_body(s3_model)).json()["id"]
    ctx = worker_context(make_settings(worker_classes=TINY_CLASS))
    assert runner.run_job(job_id, ctx) == "failed"
    with ctx.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.error_code == "insufficient_resources" and job.attempt == 1
        assert job.plan is not None and job.plan["refusal"] == job.error_message
        assert job.progress_stage == "starting"  # failed before the fetch began


def test_a_job_of_more_ranks_than_any_class_has_is_refused(client_for: Any, model_dir: Path) -> None:
    """resources.gpus (compression/multirank.py) against the classes' GPUs; each extra rank holds the model."""
    four = {"name": "four", "gpus": 4, "gpu_memory_gb": 80, "host_memory_gb": 512, "disk_gb": 1000}
    api = client_for(worker_classes=BIG_CLASS + [four])
    body = {**_body(model_dir.as_uri()), "resources": {"gpus": 8}}
    resp = api.post("/v1/jobs", json=body)
    assert resp.status_code == 422, resp.text
    message = resp.json()["error"]["message"]
    assert "big: ranks: needs 8 (GPUs), has 1" in message and "four: ranks: needs 8 (GPUs), has 4" in message
    body["resources"] = {"gpus": 3}
    plan = api.post("/v1/plan", json=body).json()
    assert plan["runnable_on"] == ["four"]
    one = api.post("/v1/plan", json=_body(model_dir.as_uri())).json()
    three, single = plan["estimates"][1], one["estimates"][1]
    assert three["host_memory_bytes"] > single["host_memory_bytes"] + 2 * 1e9  # two more processes, 1 GB runtime each
    assert api.post("/v1/jobs", json=body).status_code == 202


def test_multi_rank_jobs_go_to_the_queue_of_the_next_size_up() -> None:
    from presso.app.core.queue import QUEUES, multi_gpu_queue
    from presso.app.jobs.schemas import JobCreate
    from presso.app.jobs.service import queue_for

    assert [multi_gpu_queue(n) for n in (2, 3, 4, 5, 8)] == ["gpu-x2", "gpu-x4", "gpu-x4", "gpu-x8", "gpu-x8"]
    assert {"gpu-x2", "gpu-x4", "gpu-x8"} <= set(QUEUES)
    body = {"model_uri": "s3://m/x", "recipe": RTN}
    assert queue_for(JobCreate.model_validate(body)) == "gpu"
    assert queue_for(JobCreate.model_validate({**body, "resources": {"gpus": 3}})) == "gpu-x4"
