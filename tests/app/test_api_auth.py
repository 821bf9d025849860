"""Tenancy and keys: isolation (another tenant's job is a 404 like a missing one), revocation, admin."""

from __future__ import annotations

from typing import Any

import pytest
from svc_helpers import ADMIN_KEY, RTN, Api, new_tenant

BODY = {"model_uri": "s3://presso-test-models/tiny", "recipe": RTN}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
JOB_ROUTES = [
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("GET", "/v1/jobs/{id}/artifact"),
    ("GET", "/v1/jobs/{id}/report"),
    ("GET", "/v1/jobs/{id}/files/config.json"),
]


def _call(client: Any, method: str, url: str, headers: dict[str, str]) -> Any:
    return client.request(method, url, headers=headers)


@pytest.mark.parametrize(("method", "route"), JOB_ROUTES)
def test_other_tenants_job_is_404_like_missing(api: Api, app_client: Any, method: str, route: str) -> None:
    job = api.post("/v1/jobs", json=BODY).json()
    intruder = new_tenant(app_client)
    theirs = _call(app_client, method, route.format(id=job["id"]), intruder.headers)
    missing = _call(app_client, method, route.format(id="0" * 32), intruder.headers)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert theirs.text.replace(job["id"], "ID") == missing.text.replace("0" * 32, "ID")


@pytest.mark.parametrize(("method", "route"), [*JOB_ROUTES, ("GET", "/v1/jobs"), ("POST", "/v1/jobs")])
def test_no_key_and_bad_key_are_401(app_client: Any, method: str, route: str) -> None:
    url = route.format(id="0" * 32)
    for headers in ({}, {"Authorization": "Bearer presso_sk_wrong"}, {"Authorization": "Basic abc"}):
        resp = _call(app_client, method, url, headers)
        assert resp.status_code == 401, (url, headers, resp.text)
        assert resp.json()["error"]["code"] == "unauthorized"


def test_list_shows_only_own_jobs(api: Api, app_client: Any) -> None:
    mine = api.post("/v1/jobs", json=BODY).json()["id"]
    other = new_tenant(app_client)
    theirs = other.post("/v1/jobs", json=BODY).json()["id"]
    listed = [j["id"] for j in api.get("/v1/jobs").json()["data"]]
    assert mine in listed and theirs not in listed


def test_revoked_key_is_401(api: Api, app_client: Any) -> None:
    assert api.get("/v1/jobs").status_code == 200
    resp = app_client.post(f"/v1/admin/keys/{api.key_id}/revoke", headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["revoked_at"]
    resp = api.get("/v1/jobs")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "unauthorized"


def test_x_api_key_header_works(api: Api, app_client: Any) -> None:
    assert app_client.get("/v1/jobs", headers={"X-API-Key": api.key}).status_code == 200


def test_key_is_shown_once_and_stored_hashed(api: Api, app_client: Any) -> None:
    assert api.key.startswith("presso_sk_")
    keys = app_client.get(f"/v1/admin/tenants/{api.tenant_id}/keys", headers=ADMIN).json()
    assert [k["id"] for k in keys] == [api.key_id]
    assert "secret" not in keys[0] and api.key not in str(keys)
    assert api.key.startswith(keys[0]["prefix"])
    from sqlalchemy import select

    from presso.app.core.security import hash_key
    from presso.app.tenants.models import ApiKey

    with app_client.app.state.session_factory() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.id == api.key_id)).one()
        assert row.key_hash == hash_key(api.key)


def test_admin_routes_need_the_admin_key(api: Api, app_client: Any) -> None:
    for headers in ({}, api.headers, {"Authorization": "Bearer wrong"}):
        resp = app_client.get("/v1/admin/tenants", headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "unauthorized"
    assert app_client.get("/v1/admin/tenants", headers=ADMIN).status_code == 200


def test_admin_errors_have_codes(app_client: Any) -> None:
    resp = app_client.post("/v1/admin/tenants/nope/keys", json={}, headers=ADMIN)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = app_client.post("/v1/admin/keys/nope/revoke", headers=ADMIN)
    assert resp.status_code == 404
    new_tenant(app_client, name="dup-tenant-name") if not _exists(app_client, "dup-tenant-name") else None
    resp = app_client.post("/v1/admin/tenants", json={"name": "dup-tenant-name"}, headers=ADMIN)
    assert resp.status_code == 409
    resp = app_client.post("/v1/admin/tenants", json={"name": "bad name/with slash"}, headers=ADMIN)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "name"


def _exists(client: Any, name: str) -> bool:
    return any(t["name"] == name for t in client.get("/v1/admin/tenants", headers=ADMIN).json())


def test_admin_api_disabled_without_admin_key(make_settings: Any) -> None:
    from fastapi.testclient import TestClient

    from presso.app.main import create_app

    with TestClient(create_app(make_settings(admin_key=None))) as client:
        resp = client.get("/v1/admin/tenants", headers=ADMIN)
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "forbidden"


def test_rate_limit_is_429_with_retry_after(make_settings: Any) -> None:
    from fastapi.testclient import TestClient

    from presso.app.main import create_app

    with TestClient(create_app(make_settings(rate_limit_per_s=1, rate_limit_burst=3))) as client:
        api = new_tenant(client)
        codes = [api.get("/v1/jobs").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200]
        resp = api.get("/v1/jobs")
        assert resp.status_code == 429
        assert resp.json()["error"]["code"] == "rate_limited"
        assert int(resp.headers["Retry-After"]) >= 1
        other = new_tenant(client)
        assert other.get("/v1/jobs").status_code == 200  # buckets are per key


def test_auth_disabled_uses_default_tenant(make_settings: Any) -> None:
    from fastapi.testclient import TestClient

    from presso.app.main import create_app

    with TestClient(create_app(make_settings(auth="disabled"))) as client:
        resp = client.post("/v1/jobs", json=BODY)
        assert resp.status_code == 202
        assert client.get(f"/v1/jobs/{resp.json()['id']}").status_code == 200
