"""`presso serve`: one command, SQLite + filesystem transport + local store, a real job over HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from svc_helpers import RTN, free_port, stop_group

from presso.client import PressoClient, PressoError

ROOT = Path(__file__).resolve().parents[2]


def test_presso_serve_runs_a_job(tmp_path: Path, tiny_llama_dir: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_llama_dir, models / "tiny")
    data = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSO_")}
    env.update({"PRESSO_DATA_DIR": str(data), "PRESSO_ALLOWED_FILE_ROOTS": str(models),
                "PRESSO_REAPER_INTERVAL_S": "2"})
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "presso.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        key = (data / "dev-api-key").read_text().strip()
        assert key.startswith("presso_sk_")
        assert (data / "presso.db").is_file()
        with PressoClient(url, key) as client:
            body = {"model_uri": (models / "tiny").as_uri(), "recipe": RTN,
                    "evaluation": {"windows": 2, "seq_len": 32, "latency": False}}
            job = client.submit(body)
            job = client.wait(job["id"], timeout=240, poll=0.5)
            assert job["state"] == "succeeded", (job, (tmp_path / "serve.log").read_text()[-4000:])
            manifest = client.artifact(job["id"])
            assert all(f["url"].startswith(f"{url}/v1/jobs/{job['id']}/files/") for f in manifest["files"])
            files = client.download(job["id"], tmp_path / "out")
            assert (tmp_path / "out" / "config.json") in files
            _lossless_job(client, url, body, tmp_path)
            _deployment_transforms_job(client, body, models, tmp_path)
            with pytest.raises(PressoError) as refused:
                client.submit({**body, "model_uri": "file:///etc"})
            assert refused.value.status == 422 and refused.value.code == "invalid_model_uri"
    except Exception:
        print((tmp_path / "serve.log").read_text()[-4000:])
        raise
    finally:
        stop_group(proc)
        log.close()


def _lossless_job(client: PressoClient, url: str, body: dict, tmp_path: Path) -> None:
    """A recipe ending in `lossless`: the store keeps *.pzst; the API also serves decoded safetensors."""
    import hashlib

    job = client.submit({**body, "recipe": {"steps": [*body["recipe"]["steps"], {"method": "lossless"}]}})
    job = client.wait(job["id"], timeout=240, poll=0.5)
    assert job["state"] == "succeeded", job
    manifest = client.artifact(job["id"])
    assert any(f["path"] == "model.safetensors.pzst" for f in manifest["files"])
    (decoded,) = [f for f in manifest["decoded_files"] if f["path"] == "model.safetensors"]
    resp = httpx.get(decoded["url"], headers={"Authorization": f"Bearer {client.api_key}"}, timeout=60)
    assert resp.status_code == 200, resp.text[:500]
    assert hashlib.sha256(resp.content).hexdigest() == decoded["sha256"]
    assert len(resp.content) == decoded["size"]
    files = client.download(job["id"], tmp_path / "out-lossless")  # restores *.pzst locally
    restored = tmp_path / "out-lossless" / "model.safetensors"
    assert restored in files and hashlib.sha256(restored.read_bytes()).hexdigest() == decoded["sha256"]


def _deployment_transforms_job(client: PressoClient, body: dict, models: Path, tmp_path: Path) -> None:
    """Issue 19 over the API: rotate + smoothquant + FP8 with GPTQ rounding + an FP8 KV cache in one job; the
    artifact holds the float-quantized weights and the KV scales and presso.load runs it."""
    import json

    (models / "calib.txt").write_text(" ".join(["the cat sat on a mat and the dog ran far away"] * 120))
    recipe = {"steps": [{"method": "rotate"}, {"method": "smoothquant"}, {"method": "fp8", "rounding": "gptq"}],
              "kv_cache": {"format": "fp8"}}
    job = client.submit({**body, "recipe": recipe,
                         "calibration": {"uri": (models / "calib.txt").as_uri(), "samples": 4, "seq_len": 32}})
    job = client.wait(job["id"], timeout=240, poll=0.5)
    assert job["state"] == "succeeded", job
    assert [s["method"] for s in job["metrics"]["steps"]] == ["rotate", "smoothquant", "fp8", "kv_cache"]
    client.download(job["id"], tmp_path / "out-issue19")
    qcfg = json.loads((tmp_path / "out-issue19" / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "float-quantized" and qcfg["kv_cache_scheme"]["type"] == "float"
    from presso.compression.core import kvquant
    from presso.load import load

    assert len(kvquant.quantizers(load(tmp_path / "out-issue19"))) == 2

