"""Fixtures of the security tests: an API on the real services, a worker context sharing its settings and
a local HTTP server for hostile responses (loopback allowed explicitly by the settings)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_helpers import Served, serve_http
from svc_helpers import worker_context


@pytest.fixture
def http_server() -> Iterator[Served]:
    with serve_http() as served:
        yield served


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny jobs in this process: one torch thread is ~10x faster on a loaded 2-CPU machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def worker_ctx(app_client: Any) -> Any:
    """A worker context with the API's own settings (same database, store and prefix)."""
    return worker_context(app_client.app.state.settings)


@pytest.fixture
def sec_settings(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "allowed").mkdir()
    return dict(work_dir=tmp_path / "work", allowed_file_roots=[tmp_path / "allowed"], max_model_bytes=8 * 2**20,
                max_model_params=10**9, fetch_timeout_s=8, presign_expires_s=120)


@pytest.fixture
def app_client(make_settings: Any, sec_settings: dict[str, Any]) -> Iterator[Any]:
    """Overrides the suite's app_client: the settings above (loopback allowed by make_settings)."""
    from fastapi.testclient import TestClient

    from presso.app.main import create_app

    with TestClient(create_app(make_settings(**sec_settings)), follow_redirects=False) as client:
        yield client
