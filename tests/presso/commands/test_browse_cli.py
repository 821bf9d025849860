"""presso submit --wait / list / report / methods / logs / login against the real API and the real worker runner.
The CLI runs as a subprocess (what a user runs), so its stderr is exactly what a terminal would show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from svc_helpers import MODEL_BUCKET, RTN, new_tenant, serve_api, upload_dir, worker_context

from presso.cli import build_parser
from presso.workers.runner import run_job

ROOT = Path(__file__).resolve().parents[3]
FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}


@pytest.mark.parametrize("command", ["list", "report", "methods", "logs", "login", "submit", "status", "cancel",
                                     "download", "webhooks"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"presso {command} " in out


def _cli(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Bytes decoded by hand: text mode would turn the progress line's carriage returns into newlines."""
    done = subprocess.run([sys.executable, "-m", "presso.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          timeout=300, input=stdin.encode() if stdin else None)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture
def served(make_settings: Any, tmp_path: Path) -> Any:
    settings = make_settings()
    with serve_api(settings) as url, httpx.Client(base_url=url) as admin:
        tenant = new_tenant(admin)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSO_")}
        env.update({"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PRESSO_DATA_DIR": str(tmp_path / "none"),
                    "OMP_NUM_THREADS": "1"})
        yield url, tenant, settings, env


def _worker_when_queued(settings: Any, url: str, key: str, name: str) -> threading.Thread:
    """Run the worker on the job named ``name`` once the CLI has submitted it."""
    ctx = worker_context(settings)

    def work() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            for _ in range(600):
                jobs = http.get("/v1/jobs", params={"name": name}).json()["data"]
                if jobs:
                    time.sleep(1.0)  # let the CLI poll a few times while queued
                    run_job(jobs[0]["id"], ctx)
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_login_submit_wait_list_report_logs(served: Any, s3_endpoint: str, tiny_llama_dir: Path) -> None:
    url, tenant, settings, env = served
    # login: a wrong key is refused and nothing saved; the right one is saved 0600 and used from then on
    bad = _cli(["login", "--server", url, "--api-key", "-"], env, stdin="presso_sk_wrong\n")
    assert bad.returncode == 2 and "unauthorized" in bad.stderr
    assert not (Path(env["XDG_CONFIG_HOME"]) / "presso" / "config.toml").exists()
    ok = _cli(["login", "--server", url, "--api-key", "-"], env, stdin=tenant.key + "\n")
    assert ok.returncode == 0, ok.stderr
    config = Path(env["XDG_CONFIG_HOME"]) / "presso" / "config.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o600" and tenant.key in config.read_text()

    uri = upload_dir(s3_endpoint, MODEL_BUCKET, f"cli-{uuid.uuid4().hex[:8]}", tiny_llama_dir)
    tag = uuid.uuid4().hex[:8]
    name = f"cli-{tag}"
    worker = _worker_when_queued(settings, url, tenant.key, name)
    sub = _cli(["submit", uri, "--recipe", json.dumps(RTN), "--eval-windows", "2", "--eval-seq-len", "32",
                "--no-latency", "--name", name, "--label", f"run={tag}", "--label", "team=nlp",
                "--metadata", '{"ticket": "ML-42"}', "--wait"], env)
    worker.join(timeout=60)
    assert sub.returncode == 0, sub.stderr
    job = json.loads(sub.stdout)
    assert job["state"] == "succeeded" and job["labels"] == {"run": tag, "team": "nlp"}
    assert job["metadata"] == {"ticket": "ML-42"} and job["name"] == name
    # one progress line rewritten in place: no HTTP request log lines, a single newline at the end
    assert "HTTP Request" not in sub.stderr and sub.stderr.count("\n") == 1, sub.stderr
    assert sub.stderr.count("\r") >= 2 and "succeeded" in sub.stderr and "100.0%" in sub.stderr

    listed = _cli(["list", "--label", f"run={tag}"], env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATE", "PROGRESS"] and len(lines) == 2
    assert job["id"] in lines[1] and "succeeded" in lines[1] and f"run={tag}" in lines[1]
    as_json = json.loads(_cli(["list", "--label", f"run={tag}", "--label", "team=vision", "--json"], env).stdout)
    assert as_json["data"] == []

    report = _cli(["report", job["id"]], env)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("LAYER") and "model.layers.0" in report.stdout

    logs = _cli(["logs", job["id"], "--follow"], env)
    assert logs.returncode == 0 and "started" in logs.stdout and "succeeded" in logs.stdout, logs.stdout

    methods = _cli(["methods"], env)
    assert methods.returncode == 0 and any(line.startswith("gptq ") for line in methods.stdout.splitlines())
    gptq = _cli(["methods", "gptq"], env)
    assert gptq.returncode == 0 and "PARAMETER" in gptq.stdout and "bits" in gptq.stdout
    unknown = _cli(["methods", "nope"], env)
    assert unknown.returncode == 2 and "unknown_method" in unknown.stderr

    secret = _cli(["webhooks", "secret"], env)
    assert secret.returncode == 0 and secret.stdout.startswith("whsec_")
    rotated = _cli(["webhooks", "secret", "--rotate"], env)
    assert rotated.stdout.startswith("whsec_") and rotated.stdout != secret.stdout
    refused = _cli(["webhooks", "default", "https://10.0.0.1/hook"], env)
    assert refused.returncode == 2 and "invalid_callback_url" in refused.stderr
    assert _cli(["webhooks", "default"], env).stdout.strip() == "(none)"

    # the environment wins over the config file
    env_key = _cli(["list"], {**env, "PRESSO_API_KEY": "presso_sk_wrong"})
    assert env_key.returncode == 2 and "unauthorized" in env_key.stderr
