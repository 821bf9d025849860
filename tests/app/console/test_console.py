"""The web console over HTTP (TestClient, real Postgres / Redis / S3): sessions, cookie flags, CSRF,
tenant scoping, filters and pages, the submit form's validation, the OpenAPI document and offline docs.
The same flows in a real browser: test_console_browser.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from svc_helpers import ADMIN_KEY, RTN, Api, new_tenant

from presso.app.console.session import COOKIE, ConsoleSession, Signer
from presso.app.console.settings import ConsoleSettings

BODY = {"model_uri": "s3://presso-test-models/tiny", "recipe": RTN}


class Browserish:
    """A TestClient with its own cookie jar, signed in to the console with one tenant's key."""

    def __init__(self, app: Any, api: Api | None = None, base_url: str = "http://testserver"):
        self.client = TestClient(app, base_url=base_url, follow_redirects=False)
        self.api = api
        if api is not None:
            resp = self.sign_in(api.key)
            assert resp.status_code == 303, resp.text

    def csrf(self, path: str = "/console/jobs") -> str:
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]

    def sign_in(self, key: str) -> Any:
        token = self.csrf("/console/login")
        return self.client.post("/console/login", data={"api_key": key, "csrf_token": token,
                                                        "next": "/console/jobs"})

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, **kw)

    def post(self, url: str, data: dict[str, str], **kw: Any) -> Any:
        return self.client.post(url, data=data, **kw)


@pytest.fixture
def console(app_client: Any, api: Api) -> Browserish:
    return Browserish(app_client.app, api)


def _submit(api: Api, **overrides: Any) -> dict[str, Any]:
    resp = api.post("/v1/jobs", json={**BODY, **overrides})
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


# ---- sign-in, session cookie, CSRF ----------------------------------------------------------------


def test_pages_need_a_session(app_client: Any) -> None:
    anon = Browserish(app_client.app)
    resp = anon.get("/console/jobs?state=queued")
    assert resp.status_code == 303
    assert resp.headers["location"] == "/console/login?next=%2Fconsole%2Fjobs%3Fstate%3Dqueued"
    assert anon.get("/console/api/progress?ids=x").status_code == 401


def test_sign_in_sets_a_hardened_cookie_and_never_the_key(app_client: Any, api: Api) -> None:
    anon = Browserish(app_client.app)
    resp = anon.sign_in(api.key)
    assert resp.status_code == 303 and resp.headers["location"] == "/console/jobs"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    flags = {p.strip().lower() for p in cookie.split(";")[1:]}
    assert "httponly" in flags and "samesite=lax" in flags and "path=/console" in flags
    assert "secure" not in flags  # plain http here
    assert api.key not in cookie and api.key[len("presso_sk_"):] not in cookie
    page = anon.get("/console/jobs")
    assert page.status_code == 200 and api.key not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"


def test_cookie_is_secure_over_https(app_client: Any, api: Api) -> None:
    over_tls = Browserish(app_client.app, base_url="https://testserver")
    resp = over_tls.sign_in(api.key)
    assert resp.status_code == 303
    assert "secure" in {p.strip().lower() for p in resp.headers["set-cookie"].split(";")}


def test_wrong_and_revoked_keys_are_refused_like_the_api(app_client: Any, api: Api) -> None:
    anon = Browserish(app_client.app)
    resp = anon.sign_in("presso_sk_not-a-key")
    assert resp.status_code == 401 and "invalid or revoked API key" in resp.text
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert app_client.post(f"/v1/admin/keys/{api.key_id}/revoke", headers=admin).status_code == 200
    resp = anon.sign_in(api.key)
    assert resp.status_code == 401
    assert anon.get("/console/jobs").status_code == 303


def test_revoking_the_key_ends_its_sessions(app_client: Any, console: Browserish, api: Api) -> None:
    assert console.get("/console/jobs").status_code == 200
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert app_client.post(f"/v1/admin/keys/{api.key_id}/revoke", headers=admin).status_code == 200
    resp = console.get("/console/jobs")
    assert resp.status_code == 303 and resp.headers["location"].startswith("/console/login")
    assert resp.headers["location"].endswith("&notice=revoked")
    page = console.get(resp.headers["location"])
    assert "was revoked" in page.text


def test_a_forged_or_tampered_cookie_is_no_session(app_client: Any, console: Browserish) -> None:
    value = console.client.cookies.get(COOKIE)
    body, mac = value.split(".")
    tampered = Browserish(app_client.app)
    payload = json.loads(__import__("base64").urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["t"] = uuid.uuid4().hex  # another tenant id, same signature
    forged = __import__("base64").urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    for cookie in (f"{forged}.{mac}", f"{body}.{'A' * len(mac)}", "garbage", f"{body}."):
        tampered.client.cookies.set(COOKIE, cookie, path="/console")
        assert tampered.get("/console/jobs").status_code == 303, cookie
        tampered.client.cookies.clear()


def test_signing_secret_rotation(app_client: Any, api: Api) -> None:
    old, new = b"o" * 40, b"n" * 40
    state = app_client.app.state.console
    session = ConsoleSession.for_key(api.tenant_id, api.key_id, 3600)
    cookie = Signer([old]).dumps(session)
    browser = Browserish(app_client.app)
    browser.client.cookies.set(COOKIE, cookie, path="/console")
    saved = state.signer
    try:
        state.signer = Signer([new, old])  # rotated: the new secret signs, the old one is still accepted
        resp = browser.get("/console/jobs")
        assert resp.status_code == 200
        reissued = resp.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        assert Signer([new]).loads(reissued) is not None  # re-signed with the newest secret
        state.signer = Signer([new])  # the old secret dropped: its cookies are no session
        browser.client.cookies.clear()
        browser.client.cookies.set(COOKIE, cookie, path="/console")
        assert browser.get("/console/jobs").status_code == 303
    finally:
        state.signer = saved


def test_console_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from presso.app.console.settings import signing_secrets

    monkeypatch.setenv("PRESSO_CONSOLE_SECRETS", f"{'a' * 32},{'b' * 40}")
    assert signing_secrets(ConsoleSettings(), tmp_path) == [b"a" * 32, b"b" * 40]
    monkeypatch.setenv("PRESSO_CONSOLE_SECRETS", "short")
    with pytest.raises(ValueError):
        ConsoleSettings()
    monkeypatch.delenv("PRESSO_CONSOLE_SECRETS")
    first = signing_secrets(ConsoleSettings(), tmp_path)
    assert first == signing_secrets(ConsoleSettings(), tmp_path)  # one secret per data dir, kept
    assert (tmp_path / "console-secret").stat().st_mode & 0o777 == 0o600


def test_every_post_needs_the_session_csrf_token(app_client: Any, console: Browserish, api: Api) -> None:
    job = _submit(api)
    token = console.csrf()
    other = Browserish(app_client.app, new_tenant(app_client))
    foreign = other.csrf()  # a valid token, of another session
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "x" * 43}, {"csrf_token": foreign}):
        resp = console.post(f"/console/jobs/{job['id']}/cancel", data=data)
        assert resp.status_code == 403 and "csrf_failed" in resp.text, data
        assert console.post("/console/logout", data=data).status_code == 403
        assert console.post("/console/submit", data={**data, "model_uri": BODY["model_uri"],
                                                    "s0.method": "rtn"}).status_code == 403
    assert api.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"
    # a cross-site POST with the right token still fails on its Origin; JSON bodies are not forms
    resp = console.post(f"/console/jobs/{job['id']}/cancel", data={"csrf_token": token},
                        headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403
    resp = console.client.post(f"/console/jobs/{job['id']}/cancel", json={"csrf_token": token})
    assert resp.status_code == 403
    assert api.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"
    resp = console.post(f"/console/jobs/{job['id']}/cancel", data={"csrf_token": token})
    assert resp.status_code == 303
    assert api.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
    # sign-in is a form too
    anon = Browserish(app_client.app)
    assert anon.post("/console/login", data={"api_key": api.key}).status_code == 403


def test_sign_out(console: Browserish) -> None:
    token = console.csrf()
    resp = console.post("/console/logout", data={"csrf_token": token})
    assert resp.status_code == 303 and resp.headers["location"] == "/console/login"
    assert console.get("/console/jobs").status_code == 303


def test_next_is_only_ever_a_console_path(app_client: Any, api: Api) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "/v1/jobs"):
        anon = Browserish(app_client.app)
        token = anon.csrf("/console/login")
        resp = anon.post("/console/login", data={"api_key": api.key, "csrf_token": token, "next": target})
        assert resp.headers["location"] == "/console/jobs", target


# ---- tenant scoping -----------------------------------------------------------------------------


def test_a_tenant_never_sees_another_tenants_job(app_client: Any, console: Browserish, api: Api) -> None:
    theirs = _submit(api)
    other_api = new_tenant(app_client)
    mine = _submit(other_api)
    other = Browserish(app_client.app, other_api)
    listing = other.get("/console/jobs").text
    assert mine["id"] in listing and theirs["id"] not in listing
    for url in (f"/console/jobs/{theirs['id']}", f"/console/jobs/{theirs['id']}/files/config.json",
                f"/console/jobs/{theirs['id']}/decoded/model.safetensors"):
        resp = other.get(url)
        assert resp.status_code == 404, url
        assert "not_found" in resp.text and f"no job {theirs['id']}" in resp.text
    # the same 404 as for a job that does not exist
    assert other.get(f"/console/jobs/{uuid.uuid4().hex}").status_code == 404
    resp = other.post(f"/console/jobs/{theirs['id']}/cancel", data={"csrf_token": other.csrf()})
    assert resp.status_code == 404
    assert api.get(f"/v1/jobs/{theirs['id']}").json()["state"] == "queued"
    progress = other.get(f"/console/api/progress?ids={theirs['id']},{mine['id']}").json()["data"]
    assert [p["id"] for p in progress] == [mine["id"]]
    compare = other.get(f"/console/compare?ids={theirs['id']}&ids={mine['id']}").text
    assert theirs["id"][:8] not in compare
    assert other.get(f"/console/jobs?model={theirs['model_uri']}").text.count("data-job-id") == 1


# ---- jobs list ----------------------------------------------------------------------------------


def test_filters_and_cursor_pages(console: Browserish, api: Api) -> None:
    gptq = {"steps": [{"method": "wanda", "sparsity": 0.5}, {"method": "gptq", "bits": 4}]}
    a = _submit(api, model_uri="s3://presso-test-models/Llama-Tiny")
    b = _submit(api, recipe=gptq)
    ids = [a["id"], b["id"], *(_submit(api)["id"] for _ in range(3))]

    def shown(query: str) -> list[str]:
        page = console.get(f"/console/jobs{query}")
        assert page.status_code == 200, page.text
        return re.findall(r'<tr data-job-id="([0-9a-f]+)"', page.text)

    assert shown("") == ids[::-1]
    assert shown("?method=gptq") == [b["id"]]
    assert shown("?method=wanda&state=queued") == [b["id"]]
    assert shown("?method=awq") == []
    assert shown("?model=llama-tiny") == [a["id"]]  # substring, case-insensitive
    assert shown("?model=%25") == []  # LIKE wildcards are literal
    assert shown("?state=succeeded") == []
    after = dt.datetime.fromisoformat(a["created_at"]).astimezone(dt.UTC).replace(tzinfo=None)
    assert a["id"] not in shown(f"?created_after={after.isoformat()}")
    assert shown(f"?created_before={after.isoformat(timespec='minutes')}") == []
    # blank filters, as a GET form sends them, are no filters
    assert shown("?state=&method=&model=&created_after=&created_before=&limit=50") == ids[::-1]

    seen, url = [], "?limit=2"
    for _ in range(5):
        page = console.get(f"/console/jobs{url}").text
        seen += re.findall(r'<tr data-job-id="([0-9a-f]+)"', page)
        nxt = re.search(r'id="next-page" href="/console/jobs([^"]+)"', page)
        if not nxt:
            break
        url = nxt.group(1).replace("&amp;", "&")
    assert seen == ids[::-1]

    bad = console.get("/console/jobs?state=bogus")
    assert bad.status_code == 422 and "validation_error" in bad.text
    assert console.get("/console/jobs?cursor=%%%").status_code == 422
    assert console.get("/console/jobs?created_after=yesterday").status_code == 422


def test_live_progress_json(console: Browserish, api: Api) -> None:
    job = _submit(api)
    data = console.get(f"/console/api/progress?ids={job['id']}").json()["data"]
    assert data == [{"id": job["id"], "state": "queued", "stage": None, "fraction": 0.0, "terminal": False,
                     "queue_position": data[0]["queue_position"], "attempt": 0, "cancel_requested": False,
                     "error_code": None}]
    assert data[0]["queue_position"] >= 1


# ---- job page -----------------------------------------------------------------------------------

METRICS = {
    "params_before": 107200, "params_after": 107200, "bytes_before": 428800, "bytes_after": 185296,
    "artifact_bytes": 193752, "compression_ratio": 2.31, "bits_per_weight": 5.0, "sparsity": 0.5,
    "ppl_before": 211.48, "ppl_after": 213.45, "kl": 0.0008, "ppl_increase_pct": 0.93,
    "latency": {"batch_1": {"before": {"batch": 1, "seq_len": 128, "seconds": 0.03, "tokens_per_s": 3700.0},
                            "after": {"batch": 1, "seq_len": 128, "seconds": 0.04, "tokens_per_s": 3000.0}}},
    "timings": {"load": 4.6, "data": 16.3, "compress": 1.2, "write": 0.05, "total": 23.4},
    "steps": [{"method": "wanda", "seconds": 0.08, "sparsity": 0.5, "eval": {"ppl_after": 213.06, "kl": 0.0007}},
              {"method": "gptq", "seconds": 0.67, "eval": {"ppl_after": 213.45, "kl": 0.0008}}],
    "attempts": [
        {"index": 0, "recipe": {"steps": [{"method": "rtn", "bits": 2}]}, "quality": {"ppl_after": 900.0},
         "passed": False, "gate_failures": ["perplexity +325.00% > 5.0%"], "seconds": 1.0},
        {"index": 1, "recipe": {"steps": [{"method": "wanda"}, {"method": "gptq"}]},
         "quality": {"ppl_after": 213.45}, "passed": True, "gate_failures": [], "seconds": 2.0},
    ],
    "device": "cpu",
}
REPORT = {"layers": [
    *({"name": f"model.layers.{i}.mlp.down_proj", "target": 0.5, "sparsity": 0.5, "params": 4096} for i in range(3)),
    *({"name": f"model.layers.{i}.mlp.down_proj", "bits": 4, "group_size": 32, "rel_error": 0.07 + i / 100,
       "output_error": 0.06} for i in range(3)),
], "steps": [{"method": "wanda"}, {"method": "gptq"}]}


def _publish_fake_artifact(app: Any, api: Api, job_id: str) -> dict[str, Any]:
    """What a worker leaves behind, written directly: files, manifest, a succeeded row."""
    from presso.app.jobs.models import Job

    store = app.state.store
    prefix = f"tenants/{api.tenant_id}/jobs/{job_id}/attempt-1"
    entries = []
    for path, data in (("config.json", b'{"model_type": "llama"}'), ("report.json", json.dumps(REPORT).encode())):
        store.put_bytes(f"{prefix}/{path}", data)
        entries.append({"path": path, "key": f"{prefix}/{path}", "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"job_id": job_id, "tenant_id": api.tenant_id, "attempt": 1,
                "created_at": dt.datetime.now(dt.UTC).isoformat(), "files": entries}
    store.put_bytes(f"{prefix}/manifest.json", json.dumps(manifest).encode())
    with app.state.session_factory() as session:
        job = session.get(Job, job_id)
        now = dt.datetime.now(dt.UTC)
        job.state, job.attempt, job.metrics, job.manifest_key = "succeeded", 1, METRICS, f"{prefix}/manifest.json"
        job.started_at, job.finished_at, job.progress_stage, job.progress_fraction = now, now, "done", 1.0
        session.commit()
    return manifest


def test_job_page_shows_metrics_report_attempts_and_downloads(app_client: Any, console: Browserish,
                                                              api: Api) -> None:
    job = _submit(api, evaluation={"gate": {"max_ppl_increase_pct": 5}})
    manifest = _publish_fake_artifact(app_client.app, api, job["id"])
    page = console.get(f"/console/jobs/{job['id']}")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'id="metrics-table"' in html and "perplexity after" in html and "213" in html
    assert "181 KiB (185,296 B)" in html  # bytes shown both ways
    assert 'id="latency-table"' in html and "0.811×" in html
    assert "perplexity +325.00% &gt; 5.0%" in html and "published" in html  # the gate's attempts
    # per-layer charts, one group per step, an SVG column per layer with its name
    assert "step 1: wanda" in html and "step 2: gptq" in html
    for key in ("sparsity", "bits", "rel_error", "output_error"):
        assert f'data-chart="{key}"' in html, key
    assert html.count("<title>model.layers.2.mlp.down_proj") >= 4
    # downloads with sha256; the link is the API's file route for this session's tenant
    for entry in manifest["files"]:
        assert entry["sha256"] in html
        resp = console.get(f"/console/jobs/{job['id']}/files/{entry['path']}")
        assert resp.status_code == 307 and "X-Amz-Signature" in resp.headers["location"]  # S3: presigned
    assert "&#34;max_ppl_increase_pct&#34;: 5" in html  # the request, as stored
    assert "seconds per stage" in html


def test_failed_job_shows_its_error(app_client: Any, console: Browserish, api: Api) -> None:
    from presso.app.jobs.models import Job

    job = _submit(api)
    with app_client.app.state.session_factory() as session:
        row = session.get(Job, job["id"])
        row.state, row.error_code, row.error_message = "failed", "accuracy_gate", "no recipe passed <the gate>"
        session.commit()
    html = console.get(f"/console/jobs/{job['id']}").text
    assert 'id="job-error-code">accuracy_gate<' in html
    assert "no recipe passed &lt;the gate&gt;" in html  # escaped


def test_compare_plots_chosen_jobs(app_client: Any, console: Browserish, api: Api) -> None:
    a, b = _submit(api), _submit(api)
    for j in (a, b):
        _publish_fake_artifact(app_client.app, api, j["id"])
    html = console.get(f"/console/compare?ids={a['id']}&ids={b['id']}&metric=kl").text
    svg = re.search(r"<svg class=\"chart\".*?</svg>", html, re.S).group(0)  # type: ignore[union-attr]
    assert svg.count('class="pt s0"') == 2 and svg.count('class="ref"') == 1  # two jobs + the original
    assert f"/console/jobs/{a['id']}" in svg and "KL" in svg
    by_model = console.get(f"/console/compare?model={BODY['model_uri']}").text
    assert a["id"][:8] in by_model and b["id"][:8] in by_model
    assert console.get("/console/compare?x=nope").status_code == 422


# ---- submit form --------------------------------------------------------------------------------


def _form(console: Browserish, **fields: str) -> dict[str, str]:
    page = console.get("/console/submit").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    key = re.search(r'name="form_key" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    return {"csrf_token": token, "form_key": key, **fields}


def test_submit_form_is_generated_from_the_methods_schemas(console: Browserish) -> None:
    from presso.compression.recipe import methods_catalog

    html = console.get("/console/submit").text
    for entry in methods_catalog():
        for param in entry["schema"]["properties"]:
            if param != "method":
                assert f'name="s0.{entry["method"]}.{param}"' in html, (entry["method"], param)
    assert 'placeholder="128"' in html  # a default is a placeholder, never a value


def test_submit_shows_the_api_validation_messages(console: Browserish, api: Api) -> None:
    resp = console.post("/console/submit", data=_form(console, model_uri=BODY["model_uri"], **{
        "s0.method": "rtn", "s0.rtn.bits": "12", "s0.rtn.group_size": "abc"}))
    assert resp.status_code == 422
    api_resp = api.post("/v1/jobs", json={**BODY, "recipe": {"steps": [{"method": "rtn", "bits": 12}]}})
    api_message = api_resp.json()["error"]["details"][0]["message"]
    assert re.search(rf'data-for="s0.rtn.bits">{re.escape(api_message)}<', resp.text)
    assert 'data-for="s0.rtn.group_size">' in resp.text
    assert 'value="12"' in resp.text  # what was typed stays
    resp = console.post("/console/submit", data=_form(console, model_uri="ftp://x/y", **{"s0.method": "rtn"}))
    assert resp.status_code == 422 and "invalid_model_uri" in resp.text and 'data-for="model_uri"' in resp.text
    resp = console.post("/console/submit", data=_form(console, model_uri=BODY["model_uri"], recipe_json="{nope"))
    assert resp.status_code == 422 and "not valid JSON" in resp.text
    resp = console.post("/console/submit", data=_form(console, model_uri=BODY["model_uri"]))
    assert resp.status_code == 422 and 'data-for="s0.method"' in resp.text  # no step chosen


def test_submit_creates_the_job_as_given(console: Browserish, api: Api) -> None:
    data = _form(console, model_uri=BODY["model_uri"], **{
        "s0.method": "wanda", "s0.wanda.sparsity": "0.25", "s1.method": "gptq", "s1.gptq.bits": "4",
        "s1.gptq.symmetric": "false", "s1.gptq.targets": "q_proj, k_proj", "calibration.samples": "16",
        "gate.max_kl": "0.1", "evaluation.latency": "false", "fallbacks_json": '{"steps": [{"method": "rtn"}]}'})
    resp = console.post("/console/submit", data=data)
    assert resp.status_code == 303, resp.text
    job_id = resp.headers["location"].rsplit("/", 1)[1]
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["recipe"] == {"steps": [{"method": "wanda", "sparsity": 0.25},
                                       {"method": "gptq", "bits": 4, "symmetric": False,
                                        "targets": ["q_proj", "k_proj"]}]}
    assert console.post("/console/submit", data=data).headers["location"].endswith(job_id)  # a double submit
    listing = api.get("/v1/jobs").json()["data"]
    assert [j["id"] for j in listing].count(job_id) == 1 and len(listing) == 1


# ---- OpenAPI and the docs pages -----------------------------------------------------------------


def test_openapi_declares_security_and_the_error_body(app_client: Any, api: Api) -> None:
    doc = app_client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    submit = doc["paths"]["/v1/jobs"]["post"]
    assert {"bearerAuth": []} in submit["security"]
    for status in ("401", "409", "422", "429"):
        assert submit["responses"][status]["content"]["application/json"]["schema"] == ref, status
    assert "Retry-After" in submit["responses"]["429"]["headers"]
    get_job = doc["paths"]["/v1/jobs/{job_id}"]["get"]
    assert get_job["responses"]["404"]["content"]["application/json"]["schema"] == ref
    assert "422" not in get_job["responses"]  # a plain path parameter cannot fail validation
    assert "security" not in doc["paths"]["/v1/methods"]["get"]
    assert doc["paths"]["/v1/admin/tenants"]["post"]["security"] == [{"adminBearer": []}]
    assert not any(p.startswith("/console") or p.startswith("/docs") for p in doc["paths"])
    # the documented body is the real one
    detail = doc["components"]["schemas"]["ErrorDetail"]
    body = api.post("/v1/jobs", json={**BODY, "recipe": {"steps": [{"method": "rtn", "bits": 12}]}}).json()
    assert set(body) == {"error"} and set(detail["required"]) <= set(body["error"]) <= set(detail["properties"])
    body = api.get(f"/v1/jobs/{uuid.uuid4().hex}").json()
    assert set(detail["required"]) <= set(body["error"]) <= set(detail["properties"])


def test_docs_pages_load_nothing_from_elsewhere(app_client: Any) -> None:
    for page, assets in (("/docs", ("/docs/assets/swagger-ui/swagger-ui-bundle.js",
                                    "/docs/assets/swagger-ui/swagger-ui.css")),
                         ("/redoc", ("/docs/assets/redoc/redoc.standalone.js",))):
        resp = app_client.get(page)
        assert resp.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', resp.text) + re.findall(r"url: '([^']+)'", resp.text)
        assert urls and all(u.startswith("/") for u in urls), urls
        assert "img-src 'self' data:" in resp.headers["content-security-policy"]
        for asset in assets:
            assert asset in resp.text
            got = app_client.get(asset)
            assert got.status_code == 200 and len(got.content) > 100_000


def test_auth_disabled_acts_as_the_default_tenant(make_settings: Any) -> None:
    from presso.app.main import create_app

    with TestClient(create_app(make_settings(auth="disabled")), follow_redirects=False) as client:
        anon = Browserish(client.app)
        assert anon.get("/console/login").headers["location"] == "/console/jobs"
        page = anon.get("/console/jobs")
        assert page.status_code == 200 and 'id="tenant-name">default<' in page.text
        assert "/console/logout" not in page.text  # nothing to sign out of
        resp = anon.post("/console/submit", data=_form(anon, model_uri=BODY["model_uri"], **{"s0.method": "rtn"}))
        assert resp.status_code == 303, resp.text
        assert anon.post("/console/submit", data={"model_uri": BODY["model_uri"]}).status_code == 403  # CSRF still
