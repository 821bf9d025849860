"""The presso command: --help everywhere, admin and submit/status against a live API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from svc_helpers import ADMIN_KEY, RTN, serve_api

from presso.cli import build_parser, main

COMMANDS = ["serve", "worker", "migrate", "reaper", "compress", "pack", "unpack", "submit", "status", "cancel",
            "download", "admin"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: presso" in capsys.readouterr().out


@pytest.fixture
def live_url(make_settings: Any) -> Iterator[str]:
    with serve_api(make_settings()) as url:
        yield url


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith(("{", "[")) else out


def test_admin_submit_status(live_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    admin = ["admin", "--server", live_url, "--admin-key", ADMIN_KEY]
    code, tenant = _run([*admin, "create-tenant", f"cli-{time.time_ns()}"], capsys)
    assert code == 0
    code, key = _run([*admin, "create-key", tenant["id"], "--name", "cli"], capsys)
    assert code == 0 and key["secret"].startswith("presso_sk_")
    remote = ["--server", live_url, "--api-key", key["secret"]]
    code, job = _run(["submit", "s3://presso-test-models/tiny", "--recipe", json.dumps(RTN), *remote], capsys)
    assert code == 0 and job["state"] == "queued"
    code, same = _run(["status", job["id"], *remote], capsys)
    assert code == 0 and same["id"] == job["id"]
    code, _ = _run([*admin, "revoke-key", key["id"]], capsys)
    assert code == 0
    assert main(["status", job["id"], *remote]) == 2
    assert "unauthorized" in capsys.readouterr().err
