"""Every endpoint x {own object, other tenant's object, missing object, no key, revoked key}.

The object is a real succeeded job (the worker's runner on Postgres + S3). Another tenant's job must be a
404 with the body of a missing one; presigned URLs appear only after the tenant check and expire as
configured; the intruder's calls change nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from svc_helpers import ADMIN_KEY, MODEL_BUCKET, RTN, new_tenant, upload_dir

from presso.workers.runner import run_job

FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MISSING = "0" * 32
# (method, route, status for the owner of a succeeded job, code or None)
JOB_ROUTES = [
    ("GET", "/v1/jobs/{id}", 200, None),
    ("POST", "/v1/jobs/{id}/cancel", 409, "job_finished"),
    ("GET", "/v1/jobs/{id}/artifact", 200, None),
    ("GET", "/v1/jobs/{id}/report", 200, None),
    ("GET", "/v1/jobs/{id}/files/config.json", 307, None),
    ("GET", "/v1/jobs/{id}/logs", 200, None),
    ("GET", "/v1/jobs/{id}/plan", 200, None),
]
ADMIN_ROUTES = [
    ("GET", "/v1/admin/tenants"),
    ("POST", "/v1/admin/tenants"),
    ("POST", "/v1/admin/tenants/{tenant}/keys"),
    ("GET", "/v1/admin/tenants/{tenant}/keys"),
    ("POST", "/v1/admin/keys/{key}/revoke"),
]


@pytest.fixture
def world(app_client: Any, worker_ctx: Any, s3_endpoint: str, tiny_llama_dir: Path, one_torch_thread: None
          ) -> dict[str, Any]:
    owner = new_tenant(app_client)
    uri = upload_dir(s3_endpoint, MODEL_BUCKET, f"sec-{uuid.uuid4().hex[:8]}", tiny_llama_dir)
    job = owner.post("/v1/jobs", json={"model_uri": uri, "recipe": RTN, "evaluation": FAST_EVAL}).json()
    assert run_job(job["id"], worker_ctx) == "succeeded"
    intruder = new_tenant(app_client)
    revoked = app_client.post(f"/v1/admin/tenants/{owner.tenant_id}/keys", json={"name": "old"}, headers=ADMIN).json()
    assert app_client.post(f"/v1/admin/keys/{revoked['id']}/revoke", headers=ADMIN).status_code == 200
    return {"owner": owner, "intruder": intruder, "job": job["id"], "revoked": revoked["secret"],
            "settings": app_client.app.state.settings}


def _call(client: Any, method: str, url: str, key: str | None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.request(method, url, headers=headers, json={"name": "x"} if method == "POST" else None)


def _assert_presigned(url: str, settings: Any) -> None:
    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Expires"] == [str(settings.presign_expires_s)], url
    signed_at = dt.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - signed_at).total_seconds()) < 120
    assert "X-Amz-Signature" in query


@pytest.mark.parametrize(("method", "route", "own_status", "own_code"), JOB_ROUTES)
def test_job_endpoint_matrix(app_client: Any, world: dict[str, Any], method: str, route: str, own_status: int,
                             own_code: str | None) -> None:
    job_id, owner, intruder = world["job"], world["owner"], world["intruder"]
    url = route.format(id=job_id)

    own = _call(app_client, method, url, owner.key)
    assert own.status_code == own_status, own.text
    if own_code:
        assert own.json()["error"]["code"] == own_code
    if route.endswith("/artifact"):
        body = own.json()
        assert body["expires_in_s"] == world["settings"].presign_expires_s
        for f in body["files"]:
            _assert_presigned(f["url"], world["settings"])
        config = next(f for f in body["files"] if f["path"] == "config.json")
        fetched = httpx.get(config["url"])
        assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == config["sha256"]
    if own_status == 307:
        _assert_presigned(own.headers["location"], world["settings"])

    theirs = _call(app_client, method, url, intruder.key)
    missing = _call(app_client, method, route.format(id=MISSING), intruder.key)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == "not_found"
    assert theirs.text.replace(job_id, "ID") == missing.text.replace(MISSING, "ID")  # indistinguishable
    assert dict(theirs.headers).keys() == dict(missing.headers).keys()
    assert "X-Amz" not in theirs.text and "location" not in theirs.headers  # no URL before the check

    for key in (None, world["revoked"], "presso_sk_" + "x" * 43):
        resp = _call(app_client, method, url, key)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", (key, resp.text)
        assert "X-Amz" not in resp.text

    # the intruder changed nothing
    after = _call(app_client, "GET", f"/v1/jobs/{job_id}", owner.key).json()
    assert after["state"] == "succeeded" and after["cancel_requested"] is False


@pytest.mark.parametrize(("method", "route"), [("GET", "/v1/jobs"), ("POST", "/v1/jobs")])
def test_collection_endpoints(app_client: Any, world: dict[str, Any], method: str, route: str) -> None:
    body = {"model_uri": "s3://presso-test-models/none", "recipe": RTN}
    for key in (None, world["revoked"]):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        resp = app_client.request(method, route, headers=headers, json=body if method == "POST" else None)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    if method == "GET":
        listed = world["intruder"].get(route).json()["data"]
        assert world["job"] not in [j["id"] for j in listed]
        assert world["job"] in [j["id"] for j in world["owner"].get(route).json()["data"]]
    else:
        assert world["intruder"].post(route, json=body).status_code == 202


@pytest.mark.parametrize(("method", "route"), ADMIN_ROUTES)
def test_admin_endpoints_need_the_admin_key(app_client: Any, world: dict[str, Any], method: str, route: str) -> None:
    url = route.format(tenant=world["owner"].tenant_id, key=world["owner"].key_id)
    for key in (None, world["owner"].key, world["revoked"], ADMIN_KEY + "x"):
        resp = _call(app_client, method, url, key)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", (key, resp.text)
    assert world["owner"].get("/v1/jobs").status_code == 200  # the revoke route did not run


@pytest.mark.parametrize("path", ["../../../etc/passwd", "..%2F..%2Fmanifest.json", "attempt-1/config.json",
                                  "manifest.json", "%00config.json"])
def test_file_route_serves_manifest_entries_only(app_client: Any, world: dict[str, Any], path: str) -> None:
    resp = world["owner"].get(f"/v1/jobs/{world['job']}/files/{path}")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", resp.text


@pytest.mark.parametrize("job_id", ["..%2F..%2Fv1%2Fadmin%2Ftenants", "%2e%2e", "' OR 1=1 --", "x" * 5000])
def test_hostile_job_ids_are_plain_404(app_client: Any, world: dict[str, Any], job_id: str) -> None:
    resp = world["intruder"].get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 404, resp.text
