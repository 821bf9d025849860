"""docker-compose.yml and the Dockerfile, checked without a Docker daemon: every environment variable the compose
file gives a Presso container is one that the code (or the library named for it) reads; no default secrets;
health checks, restart policies, the bucket before the services, the worker's scratch volume, a CUDA torch in
the GPU image. `docker compose config` runs too where the compose plugin is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("app", "workers", "compression", "fetch", "codec", "kernels", "presso", "migrations")
# Variables read by libraries, not by Presso's own code: the library, and a file of it that must name the variable.
LIBRARY_VARS = {
    "AWS_ACCESS_KEY_ID": ("botocore", "credentials.py"),
    "AWS_SECRET_ACCESS_KEY": ("botocore", "credentials.py"),
    "AWS_DEFAULT_REGION": ("botocore", "configprovider.py"),
    "HF_TOKEN": ("huggingface_hub", "constants.py"),
    "PROMETHEUS_MULTIPROC_DIR": ("prometheus_client", "multiprocess.py"),
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def presso_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def _source_text() -> str:
    parts = []
    for folder in SOURCE_DIRS:
        parts += [p.read_text() for p in (ROOT / folder).rglob("*.py")]
    return "\n".join(parts)


def test_every_variable_is_read(compose: dict[str, Any]) -> None:
    from presso.app.core.settings import Settings

    fields = set(Settings.model_fields)
    source = _source_text()
    seen = set()
    for name, svc in presso_services(compose).items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), name
        for var in env:
            seen.add(var)
            if var.startswith("PRESSO_"):
                field = var.removeprefix("PRESSO_").lower()
                assert field in fields or f'"{var}"' in source, f"{name}: {var} is read by nothing"
            else:
                assert var in LIBRARY_VARS, f"{name}: {var} is neither PRESSO_* nor a known library variable"
                module, filename = LIBRARY_VARS[var]
                lib = __import__(module)
                assert var in (Path(lib.__file__).parent / filename).read_text(), f"{module} does not read {var}"
    assert {"PRESSO_DATABASE_URL", "PRESSO_S3_PUBLIC_ENDPOINT_URL", "PRESSO_WORK_DIR", "HF_TOKEN"} <= seen


def test_no_default_secrets_and_env_example_lists_the_required(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for var, default in re.findall(r"\$\{(\w+):-([^}]*)\}", text):
        if re.search(r"PASSWORD|SECRET|ADMIN_KEY|ROOT_USER", var):
            pytest.fail(f"{var} has the default {default!r}: a published default secret")
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"PRESSO_ADMIN_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= required
    example = (ROOT / ".env.example").read_text()
    assert all(re.search(rf"^{v}=", example, re.M) for v in required), required
    assert "presso:presso@" not in text and "presso-secret" not in text
    minio_ports = compose["services"]["minio"]["ports"]
    assert all(p.startswith(("127.0.0.1:", "${MINIO_BIND")) for p in minio_ports), minio_ports


def test_health_restart_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "minio"):
        assert "healthcheck" in services[name], name
    for name in ("postgres", "redis", "minio", "api", "worker", "reaper"):
        assert services[name].get("restart") in ("unless-stopped", "always"), name
    assert services["createbucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("api", "worker", "reaper"):
        deps = services[name]["depends_on"]
        assert deps["createbucket"]["condition"] == "service_completed_successfully", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", name


def test_worker_scratch_and_gpu_image(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["build"]["target"] == "worker-gpu"
    work_dir = worker["environment"]["PRESSO_WORK_DIR"]
    assert any(str(v).endswith(f":{work_dir}") for v in worker["volumes"])
    assert "scratch" in compose["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    gpu_stage = dockerfile.split("AS worker-gpu", 1)[1]
    index = re.search(r"ARG TORCH_INDEX=(\S+)", gpu_stage)
    assert index and re.search(r"/cu\d+$", index.group(1)), "the GPU image must install a CUDA build of torch"
    assert f"mkdir -p {work_dir}" in gpu_stage and f"chown presso:presso {work_dir}" in gpu_stage


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")  # v1 (Debian's docker-compose package) validates the same file
    return [legacy] if legacy else None


def test_docker_compose_config(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed here")
    env = {"PATH": os.environ.get("PATH", "")}  # nothing from the caller's environment fills a variable in
    done = subprocess.run([*command, "--env-file", str(ROOT / ".env.example"), "config", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    empty = tmp_path / "empty.env"
    empty.write_text("")
    missing = subprocess.run([*command, "--env-file", str(empty), "config", "--quiet"], cwd=ROOT,
                             capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and "set " in missing.stderr  # no secret has a default
