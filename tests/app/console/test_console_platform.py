"""The console shows what issue 24 added to jobs: name, labels (and filters by one), metadata, the webhook's
delivery log, dedup, and the job's log lines (TestClient, real Postgres; the worker runner for the logs)."""

from __future__ import annotations

import html
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from svc_helpers import RTN, Api, free_port, worker_context  # noqa: E402
from test_console import Browserish  # noqa: E402

from presso.workers.runner import run_job  # noqa: E402
from presso.workers.webhooks import deliver_due  # noqa: E402


def test_labels_filter_and_job_page(app_client: Any, api: Api, make_settings: Any) -> None:
    console = Browserish(app_client.app, api)
    tag = uuid.uuid4().hex[:8]
    dead = f"http://127.0.0.1:{free_port()}/hook"
    body = {"model_uri": f"s3://presso-test-models/missing-{tag}", "recipe": RTN}
    nlp = api.post("/v1/jobs", json={**body, "name": f"nlp-{tag}", "labels": {"team": "nlp", "run": tag},
                                     "metadata": {"ticket": "ML-42"}, "callback_url": dead}).json()
    vision = api.post("/v1/jobs", json={**body, "labels": {"team": "vision", "run": tag}}).json()

    page = console.get(f"/console/jobs?label=run%3D{tag}").text
    assert nlp["id"] in page and vision["id"] in page
    page = console.get(f"/console/jobs?label=team%3Dnlp&model=missing-{tag}").text
    assert nlp["id"] in page and vision["id"] not in page and f"nlp-{tag}" in page
    assert console.get("/console/jobs?label=novalue").status_code == 422

    settings = make_settings(webhook_max_attempts=1)
    ctx = worker_context(settings)
    assert run_job(nlp["id"], ctx) == "failed"  # the model does not exist
    deliver_due(ctx.session_factory, settings)
    page = html.unescape(console.get(f"/console/jobs/{nlp['id']}").text)
    assert f"nlp-{tag}" in page and "team=nlp" in page and '"ticket": "ML-42"' in page
    assert 'id="webhook-state">failed<' in page and "fetch_failed" in page  # the delivery log
    assert 'id="logs"' in page and "started" in page  # the worker's lines of this job
    other = console.get(f"/console/jobs/{vision['id']}").text
    assert 'id="webhook"' not in other and 'id="logs"' not in other
