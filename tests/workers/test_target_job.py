"""A target-only job (issue 23) over the API and through the worker, on the real Postgres and S3 server:
accepted (202) or refused (422) at submit; the search's progress in GET /v1/jobs/{id} while it runs; the recipe
it found, its search metrics and the failure naming the best reached afterwards."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from svc_helpers import MODEL_BUCKET, Api, upload_dir, worker_context

from presso.workers.runner import run_job

SPACE = {"bits": [2, 4, 8], "group_sizes": [32]}  # float32 tiny model: W2 g32 = 3, W4 g32 = 5 bits/weight
FAST = {"generations": 4, "offspring": 4, "fitness_samples": 4, "candidates": 2, "space": SPACE}
DATA = {"calibration": {"samples": 8, "seq_len": 32}, "evaluation": {"windows": 2, "seq_len": 32, "latency": False}}


@pytest.fixture
def tiny_uri(s3_endpoint: str, tiny_llama_dir: Path) -> str:
    return upload_dir(s3_endpoint, MODEL_BUCKET, f"tiny-{uuid.uuid4().hex[:8]}", tiny_llama_dir)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("target", "field"), [
    ({"bits_per_weight": 3, "max_bytes": 10}, "target"),
    ({"max_kl": 0.1, "space": {"bits": [5]}}, "target.space.bits.0"),
    ({"max_kl": 0.1, "candidates": 10**6}, "target.candidates"),
    ({"max_kl": 0.1, "space": {"methods": ["rtn", "gptq"], "bits": [2, 3, 4, 8], "group_sizes": [16, 32, 64]}},
     "target.space"),
])
def test_bad_targets_are_422(api: Api, target: dict[str, Any], field: str) -> None:
    resp = api.post("/v1/jobs", json={"model_uri": "s3://presso-test-models/tiny", "target": target})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "validation_error" and err["field"] == field, err


def test_neither_recipe_nor_target_is_422(api: Api) -> None:
    resp = api.post("/v1/jobs", json={"model_uri": "s3://presso-test-models/tiny"})
    assert resp.status_code == 422
    assert "give a recipe, a target, or both" in resp.json()["error"]["message"]


def _run_watching(api: Api, ctx: Any, job_id: str) -> tuple[str, list[str]]:
    """Run the job in a thread and poll GET /v1/jobs/{id} meanwhile; (outcome, stages seen)."""
    out: dict[str, str] = {}
    thread = threading.Thread(target=lambda: out.setdefault("outcome", run_job(job_id, ctx)))
    thread.start()
    seen: list[str] = []
    while thread.is_alive():
        stage = api.get(f"/v1/jobs/{job_id}").json()["progress"]["stage"]
        if stage and (not seen or seen[-1] != stage):
            seen.append(stage)
        time.sleep(0.1)
    thread.join()
    return out["outcome"], seen


def test_a_target_only_job_runs_through_the_worker(api: Api, make_settings: Any, tiny_uri: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = {"bits_per_weight": 4.0, **FAST}
    resp = api.post("/v1/jobs", json={"model_uri": tiny_uri, "target": target, **DATA})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["recipe"] == {} and job["target"] == target
    # pause once in the evolutionary search, so the heartbeat (every 2 s) stores its stage for GET to show
    from presso.workers import runner

    def pausing(progress: Any, _job_id: str, _attempt: int) -> Any:
        paused: list[bool] = []

        def report(stage: str, fraction: float) -> None:
            progress(stage, fraction)
            if stage.startswith("search:evolve") and not paused:
                paused.append(True)
                time.sleep(3)
        return report

    monkeypatch.setattr(runner, "with_stage_delays", pausing)
    outcome, seen = _run_watching(api, worker_context(make_settings()), job["id"])
    assert outcome == "succeeded", seen
    shown = [s for s in seen if s.startswith("search:evolve")]
    assert shown and " evaluated, best KL " in shown[0], seen  # candidates evaluated, best so far
    done = api.get(f"/v1/jobs/{job['id']}").json()
    assert done["state"] == "succeeded" and done["progress"] == {"stage": "done", "fraction": 1.0}
    m = done["metrics"]
    steps = m["recipe_used"]["steps"]
    assert [s["method"] for s in steps] == ["gptq"]
    bits = {steps[0]["bits"]} | {o["bits"] for o in steps[0].get("overrides", []) if "bits" in o}
    assert len(bits) > 1  # mixed levels, as overrides of a normal recipe
    assert m["bits_per_weight"] <= 4.0 + 1e-9
    s = m["search"]
    assert s["candidates_evaluated"] == 2 and s["fitness_evaluations"] > 0
    assert s["best"]["bits_per_weight"] == pytest.approx(m["bits_per_weight"])
    assert s["front"] and len(m["attempts"]) == 2


def test_an_unreachable_floor_fails_the_job_naming_the_best_reached(api: Api, make_settings: Any,
                                                                     tiny_uri: str) -> None:
    target = {"bits_per_weight": 3.5, "max_ppl_increase_pct": 0.0001, **FAST, "candidates": 1}
    job = api.post("/v1/jobs", json={"model_uri": tiny_uri, "target": target, **DATA}).json()
    assert run_job(job["id"], worker_context(make_settings())) == "failed"
    got = api.get(f"/v1/jobs/{job['id']}").json()
    assert got["state"] == "failed" and got["attempt"] == 1  # a domain failure: not retried
    assert got["error"]["code"] == "target_unreachable"
    assert "best reached perplexity +" in got["error"]["message"] and "bits/weight" in got["error"]["message"]
