"""PressoClient.download / `presso download`: the same output-directory rule as `presso compress --out`
(issue 18). A served manifest over httpx.MockTransport; the lossless files are real codec output."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import httpx
import pytest

from presso.client import PressoClient
from presso.compression.errors import CompressionError


def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(range(256))


def _artifact(tmp_path: Path, *, lossless: bool) -> dict[str, bytes]:
    src = tmp_path / "served"
    src.mkdir()
    (src / "model.safetensors").write_bytes(_safetensors())
    (src / "config.json").write_text("{}")
    if lossless:
        from presso.codec.files import pack_dir

        pack_dir(src, src)
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir())}
    table = [{"path": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()]
    return {**files, "presso.json": json.dumps({"files": table}).encode()}


def _client(files: dict[str, bytes]) -> PressoClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs/j1/artifact":
            entries = [{"path": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest(), "url": f"/files/{n}"}
                       for n, b in files.items()]
            return httpx.Response(200, json={"files": entries})
        return httpx.Response(200, content=files[request.url.path.removeprefix("/files/")])

    client = PressoClient("http://presso.test", "key")
    client.http = httpx.Client(base_url=client.server, transport=httpx.MockTransport(handler))
    return client


@pytest.mark.parametrize("lossless", [False, True])
def test_download_into_a_directory_with_other_files_is_refused(tmp_path: Path, lossless: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with _client(_artifact(tmp_path, lossless=lossless)) as client, pytest.raises(CompressionError) as info:
        client.download("j1", out, overwrite=True)
    assert info.value.code == "output_dir_refused"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_lossless_download_over_a_previous_one_keeps_the_users_files(tmp_path: Path) -> None:
    """Restoring *.pzst used to rmtree the whole output directory."""
    files = _artifact(tmp_path, lossless=True)
    out = tmp_path / "out"
    with _client(files) as client:
        first = client.download("j1", out)
        assert (out / "model.safetensors").read_bytes() == _safetensors()  # decoded
        assert not (out / "model.safetensors.pzst").exists() and not (out / "pack.json").exists()
        assert {p.name for p in first} >= {"model.safetensors", "config.json"}
        (out / "notes.txt").write_text("mine")
        (out / "sub").mkdir()
        (out / "sub" / "data.bin").write_bytes(b"mine too")
        with pytest.raises(CompressionError) as info:
            client.download("j1", out)
        assert "--overwrite" in info.value.message
        client.download("j1", out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub" / "data.bin").read_bytes() == b"mine too"
    assert (out / "model.safetensors").read_bytes() == _safetensors()
    assert not any(p.name.startswith(".presso-staging-") for p in out.iterdir())


def test_cli_download_refusal_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from presso.cli import main

    files = _artifact(tmp_path, lossless=False)
    monkeypatch.setattr("presso.commands.remote.client_for", lambda args: _client(files))
    monkeypatch.chdir(tmp_path)
    assert main(["download", "j1", "."]) == 2  # tmp_path holds `served/`: not Presso's
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output_dir_refused: ") and len(err.splitlines()) == 1
    assert main(["download", "j1", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "model.safetensors").read_bytes() == _safetensors()
