"""Webhooks end to end: the real API (Postgres), the real worker runner, and a real HTTP receiver on loopback
(allowed by the documented test allowlist PRESSO_FETCH_ALLOW_PRIVATE_HOSTS / PRESSO_FETCH_ALLOW_HTTP, the same
setting as for model URIs). Signed payloads, retries with backoff, the delivery log on the job, the SSRF guard
at submit and again at send time, one delivery per attempt under concurrent senders."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from svc_helpers import MODEL_BUCKET, RTN, new_tenant, serve_api, upload_dir, worker_context

from presso.client import PressoClient, PressoError
from presso.client.webhooks import InvalidSignature, verify
from presso.workers.runner import run_job
from presso.workers.webhooks import deliver_due

FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}


@dataclass
class Receiver:
    url: str
    statuses: list[int]  # answered in order; 200 once exhausted
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="", statuses=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.got.append((dict(self.headers.items()), body))
            status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/presso"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def served(make_settings: Any) -> Iterator[tuple[str, Any, Any]]:
    settings = make_settings(webhook_backoff_s=0.3, webhook_max_attempts=3)
    with serve_api(settings) as url, httpx.Client(base_url=url) as admin:
        yield url, new_tenant(admin), settings


def test_signed_delivery_with_retries_and_log(served: Any, receiver: Receiver, s3_endpoint: str,
                                              tiny_llama_dir: Path) -> None:
    url, tenant, settings = served
    ctx = worker_context(settings)
    uri = upload_dir(s3_endpoint, MODEL_BUCKET, f"wh-{uuid.uuid4().hex[:8]}", tiny_llama_dir)
    receiver.statuses = [500, 503]
    with PressoClient(url, tenant.key) as client:
        secret = client.webhook_secret()
        assert secret.startswith("whsec_") and client.webhook_secret() == secret
        job = client.submit({"model_uri": uri, "recipe": RTN, "evaluation": FAST_EVAL,
                             "callback_url": receiver.url, "labels": {"k": "v"}})
        assert job.callback_url == receiver.url and job.webhook and job.webhook.state == "waiting"
        assert deliver_due(ctx.session_factory, settings) == 0  # not finished: nothing sent
        assert run_job(job.id, ctx) == "succeeded"

        assert deliver_due(ctx.session_factory, settings) == 1  # 500
        assert client.get(job.id).webhook.state == "retrying"  # type: ignore[union-attr]
        assert deliver_due(ctx.session_factory, settings) == 0  # backing off
        time.sleep(0.35)
        assert deliver_due(ctx.session_factory, settings) == 1  # 503
        assert deliver_due(ctx.session_factory, settings) == 0
        time.sleep(0.65)  # the second retry waits twice as long
        assert deliver_due(ctx.session_factory, settings) == 1  # 200
        assert deliver_due(ctx.session_factory, settings) == 0  # delivered: never again

        done = client.get(job.id)
        hook = done.webhook
        assert hook is not None and hook.state == "delivered" and hook.attempts == 3
        assert [e.get("status") for e in hook.log] == [500, 503, 200]
        assert [e.get("retry_in_s") for e in hook.log[:2]] == [0.3, 0.6]
        assert all("HTTP 5" in e["error"] for e in hook.log[:2]) and "error" not in hook.log[2]

    assert len(receiver.got) == 3
    deliveries = []
    for headers, body in receiver.got:
        event = verify(secret, body, headers)
        assert event["event"] == "job.finished" and event["job"]["id"] == job.id
        assert event["job"]["state"] == "succeeded" and event["job"]["labels"] == {"k": "v"}
        deliveries.append(headers["Presso-Delivery"])
        with pytest.raises(InvalidSignature, match="does not match"):
            verify(secret, body.replace(b"succeeded", b"failed"), headers)
        with pytest.raises(InvalidSignature, match="does not match"):
            verify("whsec_other", body, headers)
        with pytest.raises(InvalidSignature, match="from now"):
            verify(secret, body, headers, now=time.time() + 3600)
    assert deliveries == [f"{job.id}.1", f"{job.id}.2", f"{job.id}.3"]
    # the signature is HMAC-SHA256 over "<timestamp>." + body, as documented
    import hashlib
    import hmac

    headers, body = receiver.got[-1]
    mac = hmac.new(secret.encode(), headers["Presso-Timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["Presso-Signature"] == f"v1={mac}"


def test_cancelled_job_is_delivered_and_a_dead_receiver_fails_after_max_attempts(
        served: Any, receiver: Receiver, make_settings: Any) -> None:
    url, tenant, settings = served
    ctx = worker_context(settings)
    from svc_helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}/nobody"
    with PressoClient(url, tenant.key) as client:
        a = client.submit({"model_uri": "s3://presso-test-models/none", "recipe": RTN, "callback_url": receiver.url})
        b = client.submit({"model_uri": "s3://presso-test-models/none", "recipe": RTN, "callback_url": dead})
        client.cancel(a.id)
        client.cancel(b.id)  # terminal through the API, not the worker: the outbox still sees them
        for _ in range(3):
            deliver_due(ctx.session_factory, settings)
            time.sleep(0.65)
        assert client.get(a.id).webhook.state == "delivered"  # type: ignore[union-attr]
        hook = client.get(b.id).webhook
        assert hook is not None and hook.state == "failed" and hook.attempts == 3
        assert all(e["error"].startswith("fetch_failed") for e in hook.log), hook.log
    event = json.loads(receiver.got[0][1])
    assert event["job"]["id"] == a.id and event["job"]["state"] == "cancelled"
    assert len(receiver.got) == 1


def test_concurrent_senders_send_each_attempt_once(served: Any, receiver: Receiver) -> None:
    url, tenant, settings = served
    ctx = worker_context(settings)
    with PressoClient(url, tenant.key) as client:
        ids = [client.submit({"model_uri": "s3://presso-test-models/none", "recipe": RTN,
                              "callback_url": receiver.url}).id for _ in range(6)]
        for job_id in ids:
            client.cancel(job_id)
    threads = [threading.Thread(target=deliver_due, args=(ctx.session_factory, settings)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(h["Presso-Delivery"] for h, _ in receiver.got)
    assert got == sorted(f"{i}.1" for i in ids)


def test_callback_url_passes_the_ssrf_guard(make_settings: Any, receiver: Receiver) -> None:
    strict = make_settings(fetch_allow_private_hosts=[], fetch_allow_http=False)
    with serve_api(strict) as url, httpx.Client(base_url=url) as admin:
        tenant = new_tenant(admin)
        with PressoClient(url, tenant.key) as client:
            for bad in (receiver.url, "https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data",
                        "https://10.1.2.3/x", "https://localhost/x", "ftp://example.com/x", "https://user:pw@example.com/",
                        "https://[::1]/x"):
                with pytest.raises(PressoError) as refused:
                    client.submit({"model_uri": "s3://presso-test-models/none", "recipe": RTN, "callback_url": bad})
                assert refused.value.status == 422 and refused.value.code == "invalid_callback_url", bad
                assert refused.value.field == "callback_url"


def test_the_guard_is_checked_again_at_send_time(served: Any, receiver: Receiver, make_settings: Any) -> None:
    """Submitted while loopback was allowed; delivered by a worker whose settings do not allow it: refused there
    too (the send re-parses and re-resolves the URL; a host name re-pointed to a private address is caught)."""
    url, tenant, settings = served
    with PressoClient(url, tenant.key) as client:
        job = client.submit({"model_uri": "s3://presso-test-models/none", "recipe": RTN,
                             "callback_url": receiver.url})
        client.cancel(job.id)
        strict = make_settings(fetch_allow_private_hosts=[], fetch_allow_http=True, webhook_max_attempts=1)
        assert deliver_due(worker_context(strict).session_factory, strict) >= 1
        hook = client.get(job.id).webhook
        assert hook is not None and hook.state == "failed"
        assert hook.log[0]["error"].startswith("uri_not_allowed"), hook.log
    assert receiver.got == []


def test_tenant_default_callback(served: Any, receiver: Receiver) -> None:
    url, tenant, settings = served
    ctx = worker_context(settings)
    with PressoClient(url, tenant.key) as client:
        assert client.default_callback() is None
        with pytest.raises(PressoError) as refused:
            client.set_default_callback("https://169.254.169.254/latest")
        assert refused.value.code == "invalid_callback_url" and refused.value.field == "url"
        assert client.set_default_callback(receiver.url) == receiver.url == client.default_callback()
        body = {"model_uri": "s3://presso-test-models/none", "recipe": RTN}
        by_default = client.submit(body)
        explicit = client.submit({**body, "callback_url": receiver.url + "?explicit=1"})
        assert by_default.callback_url == receiver.url and explicit.callback_url.endswith("?explicit=1")
        assert client.set_default_callback(None) is None
        none = client.submit(body)
        assert none.callback_url is None and none.webhook is None
        for job in (by_default, explicit, none):
            client.cancel(job.id)
        deliver_due(ctx.session_factory, settings)
    paths = sorted(h.get("Presso-Delivery", "") for h, _ in receiver.got)
    assert paths == sorted([f"{by_default.id}.1", f"{explicit.id}.1"])


def test_webhook_routes_are_per_tenant(served: Any) -> None:
    url, tenant, _ = served
    with httpx.Client(base_url=url) as admin:
        other = new_tenant(admin)
        for method, path in (("GET", "/v1/webhooks/secret"), ("POST", "/v1/webhooks/secret"),
                             ("GET", "/v1/webhooks/default"), ("PUT", "/v1/webhooks/default")):
            resp = admin.request(method, path, json={"url": None} if method == "PUT" else None)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", path
    with PressoClient(url, tenant.key) as mine, PressoClient(url, other.key) as theirs:
        assert mine.webhook_secret() != theirs.webhook_secret()
        mine.set_default_callback("https://hooks.example.com/a")
        assert theirs.default_callback() is None
