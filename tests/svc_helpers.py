"""Helpers of the service tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presso.app.core.db import make_engine, make_session_factory
from presso.app.core.settings import Settings
from presso.app.jobs import service
from presso.app.jobs.schemas import JobCreate
from presso.app.storage import make_store
from presso.app.tenants.models import Tenant
from presso.app.tenants.service import ensure_tenant
from presso.workers.context import WorkerContext

PG_URL = os.environ.get("PRESSO_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/presso_test")
REDIS_URL = os.environ.get("PRESSO_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
ADMIN_KEY = "presso-test-admin-key-0123456789"
ARTIFACT_BUCKET = "presso-test-artifacts"
MODEL_BUCKET = "presso-test-models"


def drop_redis_keys(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (a session's or a stack's PRESSO_BROKER_KEY_PREFIX) in the Redis at
    ``url``: the shared test database keeps no queues of finished sessions."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    """A TestClient bound to one tenant's API key."""

    client: Any
    tenant_id: str
    key_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def post(self, url: str, **kw: Any) -> Any:
        return self.client.post(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)


@contextmanager
def serve_api(settings: Settings) -> Iterator[str]:
    """The real API (uvicorn) in a thread of this process on a free port; yields its base URL."""
    import threading
    import time

    import uvicorn

    from presso.app.main import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def new_tenant(client: Any, name: str | None = None, **fields: Any) -> Api:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    resp = client.post("/v1/admin/tenants", json={"name": name or f"t-{uuid.uuid4().hex[:12]}", **fields},
                       headers=admin)
    assert resp.status_code == 201, resp.text
    tenant_id = resp.json()["id"]
    resp = client.post(f"/v1/admin/tenants/{tenant_id}/keys", json={"name": "test"}, headers=admin)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    return Api(client=client, tenant_id=tenant_id, key_id=body["id"], key=body["secret"])


def write_tiny_llama(dest: Path, *, seed: int = 0) -> Path:
    """A random-weight LlamaForCausalLM (hidden 64, 2 layers) with a byte-level tokenizer, as safetensors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({"<s>": len(vocab), "</s>": len(vocab) + 1, "<unk>": len(vocab) + 2})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(vocab), max_position_embeddings=256, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def upload_dir(endpoint: str, bucket: str, prefix: str, src: Path) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for path in sorted(src.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(src).as_posix()}")
    return f"s3://{bucket}/{prefix}"


RTN = {"steps": [{"method": "rtn", "bits": 4, "group_size": 32}]}


# --- worker tests -------------------------------------------------------------------------------


@dataclass
class RecordingPublisher:
    """Records publishes (these tests call the runner directly, without a broker)."""

    sent: list[tuple[str, str, float]] = field(default_factory=list)

    def publish(self, job_id: str, queue: str, *, countdown: float = 0) -> None:
        self.sent.append((job_id, queue, countdown))


def worker_context(settings: Settings) -> WorkerContext:
    return WorkerContext(settings=settings, session_factory=make_session_factory(make_engine(settings)),
                         store=make_store(settings), publisher=RecordingPublisher())


def new_db_tenant(ctx: WorkerContext) -> Tenant:
    with ctx.session_factory() as session:
        return ensure_tenant(session=session, name=f"w-{uuid.uuid4().hex[:12]}")


def submit(ctx: WorkerContext, tenant: Tenant, body: dict[str, Any]) -> str:
    with ctx.session_factory() as session:
        job, _ = service.create_job(session=session, tenant=tenant, body=JobCreate.model_validate(body),
                                    idempotency_key=None, settings=ctx.settings, publisher=ctx.publisher)
        return job.id


def job_row(ctx: WorkerContext, job_id: str) -> Any:
    from presso.app.jobs.models import Job

    with ctx.session_factory() as session:
        return session.get(Job, job_id)


@contextlib.contextmanager
def migrated_database(pg_url: str, prefix: str) -> Iterator[str]:
    """A fresh database on the test Postgres server, migrated to head; dropped afterwards. Yields its URL."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    from presso.app.core.migrate import upgrade
    from presso.app.core.settings import Settings

    u = make_url(pg_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conninfo = f"host={u.host} port={u.port or 5432} user={u.username} dbname=postgres"
    if u.password:
        conninfo += f" password={u.password}"
    url = u.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade(Settings(database_url=url))
        yield url
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def presso_process(args: list[str], env: dict[str, str], log_path: Path, *, ready: str = "/readyz",
                   timeout: float = 120.0) -> Iterator[tuple[Any, str]]:
    """``python -m presso.cli <args> --port N`` in its own process group, logging to ``log_path``; yields
    (process, base URL) once ``ready`` answers 200, and stops the whole group (SIGTERM, then SIGKILL) after."""
    import sys
    import time

    import httpx

    port = free_port()
    root = Path(__file__).resolve().parents[1]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "presso.cli", *args, "--port", str(port)], cwd=root, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}{ready}", timeout=2).status_code == 200:
                        break
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.3)
            yield proc, url
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGTERM a process started with ``start_new_session=True`` and its children; SIGKILL after 20 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
