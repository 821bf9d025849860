"""A new user's path through `presso serve` (one command: API + Celery worker + SQLite): submit with the SDK
and a callback, watch it finish, receive the signed webhook (sent by the worker's webhook thread), list by
label, read the report and the logs, submit the same job again and get the artifact back at once (dedup),
and see it all in /metrics; JSON log lines with the job id and the tenant."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from svc_helpers import RTN, presso_process

from presso.client import PressoClient
from presso.client.webhooks import verify

ROOT = Path(__file__).resolve().parents[2]


def _receiver() -> tuple[ThreadingHTTPServer, list[tuple[dict[str, str], bytes]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append((dict(self.headers.items()), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


def test_serve_webhook_dedup_labels_logs_metrics(tmp_path: Path, tiny_llama_dir: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_llama_dir, models / "tiny")
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSO_")}
    env.update({"PRESSO_DATA_DIR": str(data), "PRESSO_ALLOWED_FILE_ROOTS": str(models),
                "PRESSO_FETCH_ALLOW_PRIVATE_HOSTS": "127.0.0.0/8", "PRESSO_FETCH_ALLOW_HTTP": "1",
                "PRESSO_WEBHOOK_POLL_S": "0.5", "PRESSO_LOG_FORMAT": "json", "OMP_NUM_THREADS": "1"})
    receiver, got = _receiver()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/presso"
    with presso_process(["serve"], env, tmp_path / "serve.log") as (_proc, url):
        key = (data / "dev-api-key").read_text().strip()
        body = {"model_uri": (models / "tiny").as_uri(), "recipe": RTN,
                "evaluation": {"windows": 2, "seq_len": 32, "latency": False},
                "name": "tiny-rtn", "labels": {"team": "nlp"}, "callback_url": hook}
        with PressoClient(url, key) as client:
            secret = client.webhook_secret()
            first_started = time.monotonic()
            job = client.wait(client.submit(body).id, timeout=240, poll=0.2)
            first_s = time.monotonic() - first_started
            assert job.state == "succeeded", (job, (tmp_path / "serve.log").read_text()[-3000:])
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(got) == 1, (tmp_path / "serve.log").read_text()[-3000:]
            event = verify(secret, got[0][1], got[0][0])
            assert event["job"]["id"] == job.id and event["job"]["state"] == "succeeded"
            delivered = client.get(job.id).webhook
            for _ in range(20):
                if delivered and delivered.state == "delivered":
                    break
                time.sleep(0.2)
                delivered = client.get(job.id).webhook
            assert delivered is not None and delivered.state == "delivered" and delivered.log[0]["status"] == 204

            assert [j.id for j in client.list_jobs(labels={"team": "nlp"}).data] == [job.id]
            assert client.report(job.id).layers
            assert any("succeeded" in line.message for line in client.logs(job.id).data)

            started = time.monotonic()
            again = client.wait(client.submit({**body, "name": "tiny-rtn-again"}).id, timeout=240, poll=0.2)
            assert again.state == "succeeded" and again.deduplicated_from == job.id
            assert again.metrics and again.metrics["dedup"] == {"of": job.id}
            assert {f.sha256 for f in client.artifact(again.id).files} == {f.sha256 for f in
                                                                          client.artifact(job.id).files}
            reused_s = time.monotonic() - started

            metrics = httpx.get(f"{url}/metrics").text
            assert 'presso_jobs{state="succeeded"} 2.0' in metrics
            assert "presso_job_duration_seconds_bucket" in metrics
            # SQLite's json_each: the stage timings of the job that ran, not of the one dedup answered
            assert 'presso_job_stage_seconds_count{stage="compress"} 1.0' in metrics
        receiver.shutdown()
    lines = [json.loads(x) for x in (tmp_path / "serve.log").read_text().splitlines() if x.startswith("{")]
    of_job = [x for x in lines if x.get("job_id") == job.id]
    assert of_job and all(x.get("tenant_id") for x in of_job), lines[-20:]
    print(f"dedup: first job {first_s:.2f} s, the identical second one {reused_s:.2f} s (submit to succeeded)")
