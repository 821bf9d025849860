"""The SDK against the real API (uvicorn on Postgres, Redis, an S3 server) and the real worker runner: every
call of PressoClient and AsyncPressoClient, typed models, labels/metadata filters, logs, wait() progress."""

from __future__ import annotations

import asyncio
import io
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from svc_helpers import MODEL_BUCKET, RTN, new_tenant, serve_api, upload_dir, worker_context

from presso.client import AsyncPressoClient, Job, PressoClient, PressoError
from presso.workers.runner import run_job

FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}


@pytest.fixture
def served(make_settings: Any) -> Any:
    settings = make_settings()
    with serve_api(settings) as url:
        admin = httpx.Client(base_url=url)
        yield url, new_tenant(admin), settings
        admin.close()


def _run_worker_soon(settings: Any, job_id: str, delay: float = 0.5) -> threading.Thread:
    """The worker's run_job in a thread (as the Celery task runs it), after the client started waiting."""
    ctx = worker_context(settings)

    def work() -> None:
        threading.Event().wait(delay)
        run_job(job_id, ctx)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_submit_wait_report_logs_list_download(served: Any, s3_endpoint: str, tiny_llama_dir: Path,
                                               tmp_path: Path) -> None:
    url, tenant, settings = served
    uri = upload_dir(s3_endpoint, MODEL_BUCKET, f"sdk-{uuid.uuid4().hex[:8]}", tiny_llama_dir)
    tag = uuid.uuid4().hex[:8]
    body = {"model_uri": uri, "recipe": RTN, "evaluation": FAST_EVAL, "name": f"llama-rtn-{tag}",
            "labels": {"team": "nlp", "run": tag}, "metadata": {"ticket": "ML-42", "nested": {"a": [1, 2]}}}
    with PressoClient(url, tenant.key) as client:
        methods = client.methods()
        assert {"rtn", "gptq", "lossless"} <= {m.method for m in methods}
        rtn = next(m for m in methods if m.method == "rtn")
        assert "bits" in rtn.json_schema["properties"]
        plan = client.plan(body)
        assert plan.status in ("planned", "unknown")

        job = client.submit(body)
        assert isinstance(job, Job) and job.state == "queued"
        assert job.name == body["name"] and job.labels == body["labels"] and job.metadata == body["metadata"]
        assert job["id"] == job.id  # dict-style access of older scripts
        other = client.submit({**body, "name": f"other-{tag}", "labels": {"team": "vision", "run": tag}})

        seen: list[Job] = []
        line = io.StringIO()
        worker = _run_worker_soon(settings, job.id)
        done = client.wait(job.id, timeout=240, poll=0.2, on_update=seen.append, progress=line)
        worker.join(timeout=60)
        assert done.state == "succeeded", done
        assert done.progress.fraction == 1.0 and done.metrics and done.finished_at is not None
        assert seen[0].state in ("queued", "running") and seen[-1].state == "succeeded"
        drawn = line.getvalue()
        assert drawn.count("\n") == 1 and drawn.endswith("\n")  # one line, rewritten in place
        assert 2 <= drawn.count("\r") <= len(seen) and "100.0%" in drawn.rsplit("\r", 1)[-1]
        assert "queued" in drawn and "succeeded" in drawn

        page = client.list_jobs(labels={"run": tag})
        assert {j.id for j in page.data} == {job.id, other.id}
        assert [j.id for j in client.list_jobs(labels={"run": tag, "team": "nlp"}).data] == [job.id]
        assert [j.id for j in client.list_jobs(name=f"other-{tag}").data] == [other.id]
        assert [j.id for j in client.list_jobs(labels={"run": tag}, state="succeeded").data] == [job.id]
        assert [j.id for j in client.iter_jobs(labels={"run": tag}, limit=1)] == [other.id, job.id]

        report = client.report(job.id)
        assert report.layers and all("name" in layer for layer in report.layers)
        logs = client.logs(job.id)
        text = "\n".join(x.message for x in logs.data)
        assert "started" in text and "succeeded" in text, text
        assert all(x.attempt == 1 for x in logs.data)
        assert [x.seq for x in logs.data] == sorted(x.seq for x in logs.data)
        assert client.logs(job.id, after=logs.next_after or 0).data == []
        assert client.job_plan(job.id).status in ("planned", "unknown")

        manifest = client.artifact(job.id)
        assert any(f.path == "config.json" for f in manifest.files)
        files = client.download(job.id, tmp_path / "out")
        assert tmp_path / "out" / "config.json" in files

        cancelled = client.cancel(other.id)
        assert cancelled.state == "cancelled"
        with pytest.raises(PressoError) as missing:
            client.get("nope")
        assert missing.value.status == 404 and missing.value.code == "not_found"


def test_async_client(served: Any, s3_endpoint: str, tiny_llama_dir: Path) -> None:
    url, tenant, settings = served
    uri = upload_dir(s3_endpoint, MODEL_BUCKET, f"sdk-{uuid.uuid4().hex[:8]}", tiny_llama_dir)
    tag = uuid.uuid4().hex[:8]

    async def scenario() -> tuple[Job, list[str], int, list[str]]:
        async with AsyncPressoClient(url, tenant.key) as client:
            methods = await client.methods()
            job = await client.submit({"model_uri": uri, "recipe": RTN, "evaluation": FAST_EVAL,
                                       "labels": {"run": tag}})
            states: list[str] = []

            async def record(j: Job) -> None:
                states.append(j.state)

            worker = _run_worker_soon(settings, job.id)
            done = await client.wait(job.id, timeout=240, poll=0.2, on_update=record)
            await asyncio.to_thread(worker.join, 60)
            listed = [j.id async for j in client.iter_jobs(labels={"run": tag})]
            report = await client.report(job.id)
            assert listed == [job.id] and report.layers
            logs = await client.logs(job.id)
            return done, states, len(methods), [x.message for x in logs.data]

    done, states, n_methods, lines = asyncio.run(scenario())
    assert done.state == "succeeded" and states[-1] == "succeeded" and n_methods > 3
    assert any("succeeded" in m for m in lines)


def test_labels_and_metadata_are_capped(served: Any) -> None:
    url, tenant, _ = served
    base = {"model_uri": "s3://presso-test-models/none", "recipe": RTN}
    with PressoClient(url, tenant.key) as client:
        for extra, field in (({"labels": {"bad key!": "x"}}, "labels"),
                             ({"labels": {f"k{i}": "v" for i in range(33)}}, "labels"),
                             ({"labels": {"k": "v" * 129}}, "labels"),
                             ({"metadata": {"blob": "x" * 17000}}, "metadata"),
                             ({"name": "n" * 201}, "name")):
            with pytest.raises(PressoError) as bad:
                client.submit({**base, **extra})
            assert bad.value.status == 422 and bad.value.code == "validation_error", extra
            assert bad.value.field and bad.value.field.startswith(field), (bad.value.field, extra)
        with pytest.raises(PressoError) as bad_filter:
            client.list_jobs(labels={"": "no key"})
        assert bad_filter.value.code == "validation_error" and bad_filter.value.field == "label"
