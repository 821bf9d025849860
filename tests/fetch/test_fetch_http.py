"""https-path logic against a real local HTTP server (plain http and loopback allowed explicitly)."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from presso.fetch.api import (
    FetchError,
    FetchLimits,
    FetchTimeout,
    InvalidURI,
    ModelFileCorrupt,
    ModelTooLargeError,
    NotFoundError,
    TooLarge,
    TransientFetchError,
    UnsafeModelFile,
    URINotAllowed,
    fetch_file,
    fetch_model,
    fetch_model_report,
)
from presso.fetch.guard import is_allowed_address


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "100.127.255.254",
        "224.0.0.1", "240.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::", "fec0::1",
    ],
)  # fmt: skip
def test_non_public_addresses_refused(addr: str) -> None:
    assert not is_allowed_address(ipaddress.ip_address(addr))


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_allowed(addr: str) -> None:
    assert is_allowed_address(ipaddress.ip_address(addr))


def test_explicit_allowance() -> None:
    assert is_allowed_address(ipaddress.ip_address("127.0.0.1"), ["127.0.0.0/8"])
    assert not is_allowed_address(ipaddress.ip_address("10.0.0.1"), ["127.0.0.0/8"])


def serve_model(served: Any, h: Any, prefix: str = "/m/") -> None:
    files = h.model_files()
    files["pytorch_model.bin"] = b"\x80\x04pickle"
    for name, data in files.items():
        served.routes[prefix + name] = data
    served.routes[prefix + "presso-files.txt"] = ("# model\n" + "\n".join(files) + "\n").encode()


def test_directory_by_file_list(http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    serve_model(http_server, h)
    result = fetch_model_report(f"{http_server.base}/m/", tmp_path / "job", limits)
    assert sorted(p.name for p in result.path.iterdir()) == sorted(h.model_files())
    assert "pytorch_model.bin" in result.skipped
    assert "config.json:auto_map" in result.removed_config_keys
    assert "auto_map" not in json.loads((result.path / "config.json").read_text())
    assert result.declared_params == 20


def test_single_file_and_server_ignoring_range(http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    data = h.make_safetensors({"w": ("F32", [16, 16])})

    def no_range(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    http_server.routes["/w.safetensors"] = no_range
    path = fetch_model(f"{http_server.base}/w.safetensors", tmp_path / "job", limits)
    assert path == (tmp_path / "job").resolve() / "w.safetensors" and path.read_bytes() == data


def test_loopback_refused_without_allowance(http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    serve_model(http_server, h)
    with pytest.raises(URINotAllowed) as info:
        fetch_model(f"{http_server.base}/m/", tmp_path / "job", replace(limits, allow_private_hosts=()))
    assert info.value.code == "uri_not_allowed"
    assert http_server.sent == {}


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/model.safetensors",
        "http://[::ffff:169.254.169.254]/x.safetensors",
        "http://100.64.1.1/x.safetensors",
        "file:///etc/passwd",
        "s3://bucket/model.safetensors",
    ],
)
def test_redirect_to_forbidden_location(
    http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path, location: str
) -> None:
    http_server.routes["/r/model.safetensors"] = h.redirect_to(location)
    with pytest.raises(URINotAllowed):
        fetch_model(f"{http_server.base}/r/model.safetensors", tmp_path / "job", limits)
    assert not any((tmp_path / "job").iterdir())


def test_redirects_followed_and_capped(http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    data = h.make_safetensors({"w": ("F32", [2])})
    http_server.routes["/real.safetensors"] = data
    http_server.routes["/hop.safetensors"] = h.redirect_to("/real.safetensors")
    assert fetch_model(f"{http_server.base}/hop.safetensors", tmp_path / "a", limits).read_bytes() == data
    http_server.routes["/loop.safetensors"] = h.redirect_to("/loop.safetensors")
    with pytest.raises(FetchError) as info:
        fetch_model(f"{http_server.base}/loop.safetensors", tmp_path / "b", limits)
    assert info.value.code == "fetch_failed" and "redirects" in info.value.message


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> dict[str, int]:
    real = socket.getaddrinfo
    calls: dict[str, int] = {}

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            calls[host] = calls.get(host, 0) + 1
            ip = answers[host][min(calls[host], len(answers[host])) - 1]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return calls


def test_hostname_resolving_to_loopback_refused(
    http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_model(http_server, h)
    _fake_dns(monkeypatch, {"evil.test": ["127.0.0.1"]})
    port = http_server.base.rsplit(":", 1)[1]
    with pytest.raises(URINotAllowed) as info:
        fetch_model(f"http://evil.test:{port}/m/", tmp_path / "job", replace(limits, allow_private_hosts=()))
    assert "127.0.0.1" in info.value.message
    # the same name is reachable only when listed explicitly
    ok = fetch_model(
        f"http://evil.test:{port}/m/", tmp_path / "ok", replace(limits, allow_private_hosts=("evil.test",))
    )
    assert (ok / "model.safetensors").exists()


def test_connection_goes_to_the_checked_address(
    http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a second lookup would say 10.0.0.1; the pinned first answer is used for every request."""
    serve_model(http_server, h)
    calls = _fake_dns(monkeypatch, {"rebind.test": ["127.0.0.1", "10.0.0.1"]})
    port = http_server.base.rsplit(":", 1)[1]
    fetch_model(f"http://rebind.test:{port}/m/", tmp_path / "job", limits)
    assert calls == {"rebind.test": 1}
    assert http_server.sent["/m/model.safetensors"] > 0


def test_declared_10e13_params_refused_before_download(
    http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path
) -> None:
    header = h.huge_header(10**13)
    total = len(header) + 4 * 10**13

    def virtual(handler: BaseHTTPRequestHandler) -> None:  # a 40 TB file, generated on demand
        start, _, end = handler.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")
        lo, hi = int(start), min(int(end or total - 1), total - 1, int(start) + (1 << 24))
        body = (header + b"\0" * max(0, hi + 1 - len(header)))[lo : hi + 1]
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {lo}-{hi}/{total}")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        http_server.count(handler.path, len(body))  # before writing (the test asserts right after reading)
        handler.wfile.write(body)

    http_server.routes["/huge.safetensors"] = virtual
    with pytest.raises(ModelTooLargeError) as info:
        fetch_model(f"{http_server.base}/huge.safetensors", tmp_path / "job", replace(limits, max_total_bytes=10**15))
    assert info.value.code == "model_too_large"
    assert http_server.sent["/huge.safetensors"] <= 64 * 1024
    assert not any((tmp_path / "job").iterdir())


def test_truncated_safetensors_refused(http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    http_server.routes["/t.safetensors"] = h.make_safetensors({"w": ("F32", [64, 64])})[:-100]
    with pytest.raises(ModelFileCorrupt) as info:
        fetch_model(f"{http_server.base}/t.safetensors", tmp_path / "job", limits)
    assert info.value.code == "model_load_error"


def test_size_caps(http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    http_server.routes["/big.txt"] = b"x" * (2 << 20)
    with pytest.raises(TooLarge):
        fetch_file(f"{http_server.base}/big.txt", tmp_path / "a", limits)
    http_server.routes["/forever.txt"] = h.endless(http_server, chunk=b"y" * 65536)
    with pytest.raises(TooLarge) as info:
        fetch_file(f"{http_server.base}/forever.txt", tmp_path / "b", limits)
    assert info.value.code == "too_large" and not any((tmp_path / "b").iterdir())


def test_never_ending_trickle_cut_by_deadline(http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    http_server.routes["/drip.txt"] = h.endless(http_server, chunk=b"z", pause_s=0.02)
    started = time.monotonic()
    with pytest.raises(FetchTimeout) as info:
        fetch_file(f"{http_server.base}/drip.txt", tmp_path / "a", replace(limits, timeout_s=1.0))
    assert info.value.code == "timeout" and time.monotonic() - started < 4


def test_silent_server_cut_by_deadline(http_server: Any, limits: FetchLimits, tmp_path: Path) -> None:
    def silent(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.flush()
        time.sleep(3)

    http_server.routes["/silent.txt"] = silent
    with pytest.raises(FetchTimeout):
        fetch_file(f"{http_server.base}/silent.txt", tmp_path / "a", replace(limits, timeout_s=0.8))


def test_too_many_files_in_list(http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    names = [f"model-{i:05d}.safetensors" for i in range(limits.max_files + 1)]
    http_server.routes["/many/presso-files.txt"] = "\n".join(names).encode()
    with pytest.raises(TooLarge):
        fetch_model(f"{http_server.base}/many/", tmp_path / "job", limits)
    assert http_server.sent.keys() == {"/many/presso-files.txt"}


def test_traversal_name_in_list_refused(http_server: Any, limits: FetchLimits, tmp_path: Path) -> None:
    http_server.routes["/t/presso-files.txt"] = b"model.safetensors\n../../etc/passwd\n"
    with pytest.raises(UnsafeModelFile):
        fetch_model(f"{http_server.base}/t/", tmp_path / "job", limits)


def test_single_file_kinds_and_statuses(http_server: Any, limits: FetchLimits, tmp_path: Path) -> None:
    with pytest.raises(UnsafeModelFile) as unsafe:
        fetch_model(f"{http_server.base}/pytorch_model.bin", tmp_path / "a", limits)
    assert "safetensors" in unsafe.value.message
    with pytest.raises(InvalidURI):
        fetch_model(f"{http_server.base}/model.onnx", tmp_path / "b", limits)
    with pytest.raises(NotFoundError):
        fetch_model(f"{http_server.base}/missing.safetensors", tmp_path / "c", limits)

    def status(code: int) -> Any:
        def route(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(code)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        return route

    http_server.routes["/e500.safetensors"] = status(503)
    with pytest.raises(TransientFetchError):
        fetch_model(f"{http_server.base}/e500.safetensors", tmp_path / "d", limits)
    http_server.routes["/e403.safetensors"] = status(403)
    with pytest.raises(FetchError) as denied:
        fetch_model(f"{http_server.base}/e403.safetensors", tmp_path / "e", limits)
    assert denied.value.code == "fetch_failed"


def test_fetch_file_over_http(http_server: Any, limits: FetchLimits, tmp_path: Path) -> None:
    http_server.routes["/calib.txt"] = b"hello world\n" * 10
    path = fetch_file(f"{http_server.base}/calib.txt", tmp_path / "data", limits)
    assert path.name == "calib.txt" and path.read_bytes() == b"hello world\n" * 10


@pytest.mark.parametrize("host", ["0177.0.0.1", "2130706433", "0x7f000001", "127.1", "0x7f.0.0.01"])
def test_ip_literal_forms_fetch_from_the_checked_address(
    http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path, host: str
) -> None:
    """Parsed like inet_aton, at submit and at fetch alike: loopback when allowed, refused otherwise; never an
    unmapped client error (httpx cannot parse 0177.0.0.1 itself, which made the job retry until it gave up)."""
    serve_model(http_server, h)
    port = http_server.base.rsplit(":", 1)[1]
    ok = fetch_model(f"http://{host}:{port}/m/", tmp_path / "ok", limits)
    assert (ok / "model.safetensors").exists()
    with pytest.raises(URINotAllowed):
        fetch_model(f"http://{host}:{port}/m/", tmp_path / "refused", replace(limits, allow_private_hosts=()))


def test_redirect_to_an_octal_ip_literal_is_checked(
    http_server: Any, h: Any, limits: FetchLimits, tmp_path: Path
) -> None:
    data = h.make_safetensors({"w": ("F32", [2])})
    port = http_server.base.rsplit(":", 1)[1]
    http_server.routes["/real.safetensors"] = data
    http_server.routes["/hop.safetensors"] = h.redirect_to(f"http://0177.0.0.1:{port}/real.safetensors")
    assert fetch_model(f"{http_server.base}/hop.safetensors", tmp_path / "a", limits).read_bytes() == data
    http_server.routes["/evil.safetensors"] = h.redirect_to("http://0251.0376.0251.0376/latest/x.safetensors")
    with pytest.raises(URINotAllowed):
        fetch_model(f"{http_server.base}/evil.safetensors", tmp_path / "b", limits)
    http_server.routes["/bad.safetensors"] = h.redirect_to("http://999.1.1.1/x.safetensors")
    with pytest.raises(InvalidURI):
        fetch_model(f"{http_server.base}/bad.safetensors", tmp_path / "c", limits)


def test_text_named_bin_over_https_says_what_it_is(http_server: Any, limits: FetchLimits, tmp_path: Path) -> None:
    http_server.routes["/t/model.bin"] = b"404: Not Found"
    with pytest.raises(ModelFileCorrupt) as info:
        fetch_model(f"{http_server.base}/t/model.bin", tmp_path / "a", limits)
    assert info.value.message.startswith("model.bin is not a PyTorch checkpoint (it looks like text: '404: Not Found')")
    http_server.routes["/t/presso-files.txt"] = b"config.json\nmodel.bin\n"
    http_server.routes["/t/config.json"] = b"{}"
    with pytest.raises(ModelFileCorrupt):
        fetch_model(f"{http_server.base}/t/", tmp_path / "b", limits)
