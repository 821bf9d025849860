"""Fixtures for presso.fetch: a real moto S3 server, a real local HTTP server, safetensors builders."""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_helpers import Served, endless, redirect_to, send_bytes, serve_http

from presso.fetch.api import FetchLimits

LOOPBACK = ("127.0.0.0/8", "::1/128")


def make_safetensors(tensors: dict[str, tuple[str, list[int]]], *, metadata: dict[str, str] | None = None) -> bytes:
    """A valid safetensors file of zero-filled tensors: {name: (dtype, shape)}."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1}
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def huge_header(params: int = 10**13) -> bytes:
    """Header (length + JSON) of a safetensors file declaring ``params`` F32 parameters; no data."""
    raw = json.dumps({"w": {"dtype": "F32", "shape": [params], "data_offsets": [0, 4 * params]}}).encode()
    return struct.pack("<Q", len(raw)) + raw


TINY_CONFIG = {
    "model_type": "llama",
    "hidden_size": 8,
    "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"},
    "text_config": {"custom_pipelines": {"x": {"impl": "evil.Pipe"}}, "hidden_size": 8},
}


def model_files() -> dict[str, bytes]:
    return {
        "config.json": json.dumps(TINY_CONFIG).encode(),
        "model.safetensors": make_safetensors({"w": ("F32", [4, 4]), "b": ("F16", [4])}),
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b'{"auto_map": {"AutoTokenizer": ["evil.Tok", null]}}',
    }


@pytest.fixture
def limits(tmp_path: Path) -> FetchLimits:
    """Small caps, loopback allowed explicitly, plain http allowed (the test server has no TLS)."""
    return FetchLimits(
        max_total_bytes=1 << 20,
        max_file_bytes=1 << 20,
        max_files=16,
        max_params=10**6,
        timeout_s=5.0,
        allowed_file_roots=(tmp_path / "allowed",),
        allow_private_hosts=LOOPBACK,
        allow_http=True,
    )


# -- HTTP server (tests/http_helpers.py) ---------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[Served]:
    with serve_http() as served:
        yield served


# -- S3 (moto server mode) ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fetch_s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3(fetch_s3_endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=fetch_s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = "fetch-" + uuid.uuid4().hex[:20]
    s3.create_bucket(Bucket=name)
    return name


# -- helpers as fixtures (tests run with --import-mode=importlib, so they cannot import conftest) ----


class Helpers:
    make_safetensors = staticmethod(make_safetensors)
    huge_header = staticmethod(huge_header)
    model_files = staticmethod(model_files)
    redirect_to = staticmethod(redirect_to)
    endless = staticmethod(endless)
    send_bytes = staticmethod(send_bytes)


@pytest.fixture
def h() -> type[Helpers]:
    return Helpers
