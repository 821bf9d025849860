"""A corpus of hostile inputs through the API and the worker's runner (real Postgres, S3 server, HTTP server).

Each probe is submitted over HTTP; what the API accepts is run by ``presso.workers.runner.run_job`` with the
API's settings (work_dir inside the test dir, loopback allowed explicitly, 8 MiB / 10^9 parameter caps).
Pass: every probe is refused at submit (422 with a code) or fails with a clear job error code; canary files
that unpickling or importing shipped code would create never appear; nothing is written outside the
job's directory (the work dir is empty afterwards, traversal targets do not exist).
"""

from __future__ import annotations

import json
import pickle
import struct
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from svc_helpers import ARTIFACT_BUCKET, MODEL_BUCKET, RTN, Api, new_tenant

from presso.workers.runner import run_job

FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}


class Canary:
    """Unpickling this opens (creates) the canary file: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def pickle_payload(canary: Path) -> bytes:
    data = pickle.dumps({"model.embed_tokens.weight": Canary(canary)})
    assert b"open" in data and b"R" in data  # a real code-executing pickle (REDUCE of open)
    return data


def huge_header(params: int = 10**13) -> bytes:
    raw = json.dumps({"w": {"dtype": "F32", "shape": [params], "data_offsets": [0, 4 * params]}}).encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.fixture
def env(app_client: Any, worker_ctx: Any, s3_endpoint: str, tmp_path: Path, one_torch_thread: None) -> dict[str, Any]:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    return {"api": new_tenant(app_client), "ctx": worker_ctx, "s3": s3, "tmp": tmp_path,
            "prefix": f"hostile-{uuid.uuid4().hex[:8]}", "canary": tmp_path / f"canary-{uuid.uuid4().hex}"}


def _put_dir(env: dict[str, Any], files: dict[str, bytes], prefix: str | None = None) -> str:
    prefix = prefix or f"{env['prefix']}-{uuid.uuid4().hex[:6]}"
    for name, data in files.items():
        env["s3"].put_object(Bucket=MODEL_BUCKET, Key=f"{prefix}/{name}", Body=data)
    return f"s3://{MODEL_BUCKET}/{prefix}"


def _tiny_files(tiny_llama_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in tiny_llama_dir.iterdir() if p.is_file()}


def _run(env: dict[str, Any], uri: str, **extra: Any) -> Any:
    api: Api = env["api"]
    resp = api.post("/v1/jobs", json={"model_uri": uri, "recipe": RTN, "evaluation": FAST_EVAL, **extra})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    outcome = run_job(job_id, env["ctx"])
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == outcome or outcome == "failed" and job["state"] == "failed", (outcome, job)
    return job


def _assert_contained(env: dict[str, Any], *escapes: Path) -> None:
    work = env["ctx"].settings.work_dir
    assert not work.exists() or list(work.iterdir()) == [], list(work.iterdir())  # job dirs cleaned up
    assert not env["canary"].exists(), "a pickle was unpickled or shipped code ran"
    for path in escapes:
        assert not path.exists(), f"written outside the job dir: {path}"


def _failed(job: dict[str, Any], code: str) -> None:
    assert job["state"] == "failed", job
    assert job["error"]["code"] == code, job["error"]
    assert job["error"]["message"], job["error"]


# -- pickle ----------------------------------------------------------------------------------------


def test_pickle_only_weights_refused(env: dict[str, Any]) -> None:
    uri = _put_dir(env, {"config.json": b'{"model_type": "llama"}', "pytorch_model.bin": pickle_payload(env["canary"])})
    _failed(_run(env, uri), "unsafe_model")
    _assert_contained(env)


def test_pickle_named_safetensors_refused(env: dict[str, Any]) -> None:
    uri = _put_dir(env, {"config.json": b'{"model_type": "llama"}', "model.safetensors": pickle_payload(env["canary"])})
    _failed(_run(env, uri), "model_load_error")
    _assert_contained(env)


def test_pickle_beside_safetensors_is_never_loaded(env: dict[str, Any], tiny_llama_dir: Path) -> None:
    files = {**_tiny_files(tiny_llama_dir), "pytorch_model.bin": pickle_payload(env["canary"]),
             "training_args.bin": pickle_payload(env["canary"])}
    job = _run(env, _put_dir(env, files))
    assert job["state"] == "succeeded", job
    manifest = env["api"].get(f"/v1/jobs/{job['id']}/artifact").json()
    assert not any(f["path"].endswith(".bin") for f in manifest["files"])
    _assert_contained(env)


# -- traversal names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../{esc}.safetensors", "sub/../../../{esc}.json", "..\\..\\{esc}.json",
                                  "/{esc}.safetensors"])
def test_traversal_in_s3_keys(env: dict[str, Any], tiny_llama_dir: Path, name: str) -> None:
    esc = f"escape-{uuid.uuid4().hex}"
    prefix = f"{env['prefix']}-trav"
    uri = _put_dir(env, {**_tiny_files(tiny_llama_dir), name.format(esc=esc): b"x" * 64}, prefix)
    _failed(_run(env, uri), "unsafe_model")
    _assert_contained(env, env["tmp"] / f"{esc}.safetensors", env["tmp"] / f"{esc}.json",
                      Path("/tmp") / f"{esc}.json", Path("/tmp") / f"{esc}.safetensors", Path(f"/{esc}.safetensors"))


@pytest.mark.parametrize(("name", "refused"), [
    ("../../{esc}.json", True), ("/tmp/{esc}.json", True), ("a/../../{esc}.json", True),
    ("config.json\x00.txt", True),
    ("%2e%2e/{esc}.json", False),  # a sub-directory entry: skipped (top-level files only), never requested
])
def test_traversal_in_presso_files_list(env: dict[str, Any], http_server: Any, tiny_llama_dir: Path,
                                        name: str, refused: bool) -> None:
    esc = f"escape-{uuid.uuid4().hex}"
    files = _tiny_files(tiny_llama_dir)
    for fname, data in files.items():
        http_server.routes[f"/m/{fname}"] = data
    listing = "\n".join([*files, name.format(esc=esc)])
    http_server.routes["/m/presso-files.txt"] = listing.encode()
    http_server.routes[f"/{esc}.json"] = b"{}"
    job = _run(env, f"{http_server.base}/m/")
    if refused:
        _failed(job, "unsafe_model")
    else:
        assert job["state"] == "succeeded", job
    _assert_contained(env, env["tmp"] / f"{esc}.json", Path("/tmp") / f"{esc}.json")
    assert not [p for p in http_server.sent if esc in p]  # never even requested


# -- sizes and never-ending responses --------------------------------------------------------------


def test_header_declaring_1e13_parameters(env: dict[str, Any], http_server: Any) -> None:
    header = huge_header()
    http_server.routes["/big/model.safetensors"] = header + b"\0" * (1 << 20)
    job = _run(env, f"{http_server.base}/big/model.safetensors")
    _failed(job, "model_too_large")
    # the header only: one ranged read by the resource planner (before the fetch), one peek by the fetch;
    # never the 1 MiB body
    assert http_server.sent["/big/model.safetensors"] <= 2 * (64 * 1024 + len(header))
    _assert_contained(env)


def test_header_declaring_1e13_parameters_in_s3(env: dict[str, Any]) -> None:
    uri = _put_dir(env, {"config.json": b'{"model_type": "llama"}', "model.safetensors": huge_header()})
    _failed(_run(env, uri), "model_too_large")
    _assert_contained(env)


def test_never_ending_response(env: dict[str, Any], http_server: Any) -> None:
    from http_helpers import endless

    http_server.routes["/inf/model.gguf"] = endless(http_server)
    job = _run(env, f"{http_server.base}/inf/model.gguf")
    assert job["state"] == "failed" and job["error"]["code"] in ("too_large", "timeout"), job
    cap = env["ctx"].settings.max_model_bytes
    assert http_server.sent["/inf/model.gguf"] < cap + 64 * 2**20  # cut near the cap, not at the 30 s end
    _assert_contained(env)


# -- SSRF and local files --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/model.safetensors",
                                    "http://[::ffff:169.254.169.254]/model.safetensors",
                                    "http://10.0.0.1/model.safetensors", "http://100.64.0.1/model.safetensors"])
def test_redirect_to_metadata_address(env: dict[str, Any], http_server: Any, target: str) -> None:
    from http_helpers import redirect_to as redirect

    http_server.routes["/r/model.safetensors"] = redirect(target)
    job = _run(env, f"{http_server.base}/r/model.safetensors")
    _failed(job, "uri_not_allowed")
    _assert_contained(env)


@pytest.mark.parametrize("uri", ["http://169.254.169.254/latest/meta-data/", "file:///etc/passwd",
                                 "file:///proc/self/environ", "gopher://127.0.0.1/x", "ftp://example.com/m.safetensors",
                                 "http://[::ffff:169.254.169.254]/m.safetensors", "s3://../etc", "hf://../../etc"])
def test_refused_at_submit(env: dict[str, Any], uri: str) -> None:
    resp = env["api"].post("/v1/jobs", json={"model_uri": uri, "recipe": RTN})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_model_uri" and resp.json()["error"]["field"] == "model_uri"


def test_file_symlink_out_of_allowed_root(env: dict[str, Any], tiny_llama_dir: Path) -> None:
    root = env["ctx"].settings.allowed_file_roots[0]
    outside = env["tmp"] / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes((tiny_llama_dir / "model.safetensors").read_bytes())
    model = root / "m"
    model.mkdir()
    (model / "config.json").write_bytes((tiny_llama_dir / "config.json").read_bytes())
    (model / "model.safetensors").symlink_to(outside / "model.safetensors")
    job = _run(env, model.as_uri())
    _failed(job, "uri_not_allowed")
    outside_uri = (outside / "model.safetensors").as_uri()
    resp = env["api"].post("/v1/jobs", json={"model_uri": outside_uri, "recipe": RTN})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_model_uri"
    _assert_contained(env)


# -- code pointers in configs ----------------------------------------------------------------------


def test_auto_map_stripped_and_code_never_imported(env: dict[str, Any], tiny_llama_dir: Path) -> None:
    files = _tiny_files(tiny_llama_dir)
    config = json.loads(files["config.json"])
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    config["trust_remote_code"] = True
    files["config.json"] = json.dumps(config).encode()
    tok = json.loads(files["tokenizer_config.json"])
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.Tok", None]}
    files["tokenizer_config.json"] = json.dumps(tok).encode()
    evil = f"open({str(env['canary'])!r}, 'w').write('pwned')\n".encode()
    files["modeling_evil.py"] = evil
    files["tokenization_evil.py"] = evil
    job = _run(env, _put_dir(env, files))
    assert job["state"] == "succeeded", job
    manifest = env["api"].get(f"/v1/jobs/{job['id']}/artifact").json()
    assert not any(f["path"].endswith(".py") for f in manifest["files"])
    entry = next(f for f in manifest["files"] if f["path"] == "config.json")
    import httpx

    stored = json.loads(httpx.get(entry["url"]).content)
    assert "auto_map" not in stored and "trust_remote_code" not in stored  # no code pointers left
    _assert_contained(env)


def test_artifacts_stay_in_the_tenant_prefix(env: dict[str, Any], tiny_llama_dir: Path, s3_endpoint: str) -> None:
    job = _run(env, _put_dir(env, _tiny_files(tiny_llama_dir)))
    assert job["state"] == "succeeded"
    prefix = env["ctx"].store.prefix
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACT_BUCKET, Prefix=f"{prefix}/").get("Contents", [])
            if job["id"] in o["Key"]]
    assert keys and all(k.startswith(f"{prefix}/tenants/{env['api'].tenant_id}/jobs/{job['id']}/attempt-1/")
                        for k in keys)
