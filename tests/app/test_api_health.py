"""healthz, readyz (database, broker, store), metrics, OpenAPI docs; the API never imports torch."""

from __future__ import annotations

import subprocess
import sys
from typing import Any


def test_healthz_and_readyz(app_client: Any) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    resp = app_client.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json()["checks"] == {"database": "ok", "broker": "ok", "store": "ok"}


def test_readyz_reports_unreachable_parts(make_settings: Any) -> None:
    from fastapi.testclient import TestClient

    from presso.app.main import create_app

    settings = make_settings(broker_url="redis://127.0.0.1:1/0", store_url="s3://no-such-bucket-presso/x")
    with TestClient(create_app(settings)) as client:
        resp = client.get("/readyz")
    assert resp.status_code == 503
    checks = resp.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["broker"].startswith("error") and checks["store"].startswith("error")


def test_metrics(app_client: Any) -> None:
    app_client.get("/healthz")
    resp = app_client.get("/metrics")
    assert resp.status_code == 200
    assert "presso_http_requests_total" in resp.text
    assert "presso_jobs_submitted_total" in resp.text


def test_openapi_documents_routes(app_client: Any) -> None:
    paths = app_client.get("/openapi.json").json()["paths"]
    for p in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/artifact", "/v1/methods", "/readyz"):
        assert p in paths
    assert app_client.get("/docs").status_code == 200


def test_app_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from app.main import create_app\n"
        "from app.core.settings import Settings\n"
        "import tempfile\n"
        "settings = Settings(data_dir=tempfile.mkdtemp())\n"
        "create_app(settings)\n"
        "from app.jobs.uris import check_uri\n"
        "check_uri('s3://bucket-x/model', settings)\n"
        "bad = [m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
