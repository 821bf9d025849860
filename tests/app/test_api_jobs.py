"""Submit / get / list / paginate / cancel / idempotency against the real Postgres and Redis."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from svc_helpers import RTN, Api

BODY = {"model_uri": "s3://presso-test-models/tiny", "recipe": RTN}


def test_submit_returns_202_and_job(api: Api) -> None:
    resp = api.post("/v1/jobs", json=BODY)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["state"] == "queued"
    assert job["attempt"] == 0
    assert job["recipe"]["steps"][0]["method"] == "rtn"
    assert job["progress"] == {"stage": None, "fraction": 0.0}
    got = api.get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200
    assert got.json()["id"] == job["id"]
    assert dt.datetime.fromisoformat(got.json()["created_at"]).tzinfo is not None


def test_message_published_after_commit(api: Api, app_client: Any) -> None:
    job = api.post("/v1/jobs", json=BODY).json()
    from sqlalchemy import select

    from presso.app.jobs.models import Job

    with app_client.app.state.session_factory() as session:
        row = session.scalars(select(Job).where(Job.id == job["id"])).one()
        assert row.last_published_at is not None
        assert row.queue == "gpu"


def test_idempotency_same_body_same_job(api: Api) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = api.post("/v1/jobs", json=BODY, headers=key)
    second = api.post("/v1/jobs", json=BODY, headers=key)
    assert first.status_code == 202
    assert second.status_code == 200
    assert first.json()["id"] == second.json()["id"]


def test_idempotency_different_body_conflicts(api: Api) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    assert api.post("/v1/jobs", json=BODY, headers=key).status_code == 202
    other = {**BODY, "recipe": {"steps": [{"method": "rtn", "bits": 8}]}}
    resp = api.post("/v1/jobs", json=other, headers=key)
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "idempotency_conflict"


def test_idempotency_keys_are_per_tenant(api: Api, app_client: Any) -> None:
    from svc_helpers import new_tenant

    other = new_tenant(app_client)
    key = {"Idempotency-Key": "shared-key"}
    a = api.post("/v1/jobs", json=BODY, headers=key).json()
    b = other.post("/v1/jobs", json=BODY, headers=key).json()
    assert a["id"] != b["id"]


def test_list_paginates_with_cursor(api: Api) -> None:
    ids = [api.post("/v1/jobs", json=BODY).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3
    assert seen == list(reversed(ids))


def test_list_filters(api: Api) -> None:
    before = dt.datetime.now(dt.UTC)
    job = api.post("/v1/jobs", json=BODY).json()
    api.post(f"/v1/jobs/{job['id']}/cancel")
    api.post("/v1/jobs", json=BODY)
    cancelled = api.get("/v1/jobs", params={"state": "cancelled"}).json()["data"]
    assert [j["id"] for j in cancelled] == [job["id"]]
    recent = api.get("/v1/jobs", params={"created_after": before.isoformat()}).json()["data"]
    assert len(recent) == 2
    future = (before + dt.timedelta(hours=1)).isoformat()
    assert api.get("/v1/jobs", params={"created_after": future}).json()["data"] == []


def test_bad_cursor_is_422(api: Api) -> None:
    resp = api.get("/v1/jobs", params={"cursor": "not-a-cursor"})
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "cursor"


def test_cancel_queued_job(api: Api) -> None:
    job = api.post("/v1/jobs", json=BODY).json()
    resp = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200
    assert resp.json()["state"] == "cancelled"
    assert resp.json()["error"]["code"] == "cancelled"
    again = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"


def test_artifact_of_unfinished_job_is_409(api: Api) -> None:
    job = api.post("/v1/jobs", json=BODY).json()
    resp = api.get(f"/v1/jobs/{job['id']}/artifact")
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "artifact_not_ready"


def test_methods_catalog(api: Api) -> None:
    resp = api.get("/v1/methods")
    assert resp.status_code == 200
    methods = {m["method"]: m for m in resp.json()["data"]}
    assert "rtn" in methods and "gptq" in methods
    assert "bits" in methods["rtn"]["schema"]["properties"]


def test_lossless_only_recipe_goes_to_cpu_queue(api: Api, app_client: Any) -> None:
    job = api.post("/v1/jobs", json={**BODY, "recipe": {"steps": [{"method": "lossless"}]}}).json()
    from presso.app.jobs.models import Job

    with app_client.app.state.session_factory() as session:
        assert session.get(Job, job["id"]).queue == "cpu"


def test_tenant_job_cap_is_429(app_client: Any) -> None:
    from svc_helpers import new_tenant

    capped = new_tenant(app_client, max_active_jobs=2)
    for _ in range(2):
        assert capped.post("/v1/jobs", json=BODY).status_code == 202
    resp = capped.post("/v1/jobs", json=BODY)
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "too_many_jobs"
    assert int(resp.headers["Retry-After"]) > 0
