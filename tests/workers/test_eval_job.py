"""Issue 23's evaluation over the API and through the worker, on the real Postgres and S3 server: a job with a
multiple-choice task file on S3 gets top-1 / generation agreement, task accuracy and flip rate in its metrics
and its evaluation time in timings; GET shows the evaluation's progress while it runs; a task URI is guarded at
submit like every other URI."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from svc_helpers import MODEL_BUCKET, Api, upload_dir, worker_context

from presso.workers.runner import run_job
from tests.compression.test_eval_measures import write_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RTN = {"steps": [{"method": "rtn", "bits": 4, "group_size": 32}]}


def test_a_task_uri_is_guarded_at_submit(api: Api) -> None:
    resp = api.post("/v1/jobs", json={"model_uri": "s3://presso-test-models/tiny", "recipe": RTN,
                                      "evaluation": {"tasks": [{"uri": "http://169.254.169.254/latest"}]}})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "evaluation.tasks.0.uri"


def test_a_job_with_a_task_reports_the_measures_and_its_evaluation_progress(
        api: Api, make_settings: Any, s3_endpoint: str, tiny_llama_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"tiny-{uuid.uuid4().hex[:8]}"
    uri = upload_dir(s3_endpoint, MODEL_BUCKET, prefix, tiny_llama_dir)
    task = write_task(tmp_path / "mc.jsonl", n=8)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").upload_file(
        str(task), MODEL_BUCKET, f"{prefix}-data/mc.jsonl")
    body = {"model_uri": uri, "recipe": {"steps": [{"method": "rtn", "bits": 2, "group_size": 32}]},
            "calibration": {"samples": 4, "seq_len": 32},
            "evaluation": {"seq_len": 32, "latency": False,
                           "tasks": [{"uri": f"s3://{MODEL_BUCKET}/{prefix}-data/mc.jsonl", "name": "mc"}],
                           "gate": {"max_flip_rate": 1.0, "min_top1_agreement": 0.0}}}
    resp = api.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    from presso.workers import runner

    def pausing(progress: Any, _job_id: str, _attempt: int) -> Any:  # hold once inside the evaluation
        paused: list[bool] = []

        def report(stage: str, fraction: float) -> None:
            progress(stage, fraction)
            if stage == "evaluate" and fraction > 0 and not paused:
                paused.append(True)
                time.sleep(3)
        return report

    monkeypatch.setattr(runner, "with_stage_delays", pausing)
    out: dict[str, str] = {}
    thread = threading.Thread(target=lambda: out.setdefault("o", run_job(job_id, worker_context(make_settings()))))
    thread.start()
    seen: list[tuple[str, float]] = []
    while thread.is_alive():
        p = api.get(f"/v1/jobs/{job_id}").json()["progress"]
        seen.append((p["stage"], p["fraction"]))
        time.sleep(0.1)
    thread.join()
    assert out["o"] == "succeeded", seen
    assert any(s == "evaluate" and f > 0 for s, f in seen), seen  # not `evaluate 0.0` until the end
    m = api.get(f"/v1/jobs/{job_id}").json()["metrics"]
    assert m["tasks"]["mc"]["questions"] == 8 and 0.0 <= m["flip_rate"] <= 1.0
    assert 0.0 <= m["top1_agreement"] <= 1.0 and 0.0 <= m["generation_agreement"] <= 1.0
    assert m["timings"]["evaluate"] > 0 and 2 <= m["eval_windows"] <= 8
