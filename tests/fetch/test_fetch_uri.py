"""parse_model_uri: cheap, offline validation of model URIs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from presso.fetch.api import InvalidURI, URINotAllowed, parse_model_uri
from presso.fetch.errors import FetchError


def test_s3_uri() -> None:
    p = parse_model_uri("s3://my-bucket/models/llama/", allowed_file_roots=[])
    assert (p.scheme, p.bucket, p.key) == ("s3", "my-bucket", "models/llama/")


def test_https_uri_keeps_query() -> None:
    p = parse_model_uri("https://Example.com:8443/m/model.safetensors?sig=abc#frag", allowed_file_roots=[])
    assert (p.host, p.port, p.path, p.name) == (
        "example.com",
        8443,
        "/m/model.safetensors",
        "model.safetensors",
    )
    assert p.url == "https://Example.com:8443/m/model.safetensors?sig=abc"


@pytest.mark.parametrize(
    ("uri", "repo", "rev"),
    [
        ("hf://org/name@v1.0", "org/name", "v1.0"),
        ("hf://gpt2", "gpt2", "main"),
        ("hf://a/b@refs/pr/1", "a/b", "refs/pr/1"),
    ],
)
def test_hf_uri(uri: str, repo: str, rev: str) -> None:
    p = parse_model_uri(uri, allowed_file_roots=[])
    assert (p.repo_id, p.revision) == (repo, rev)


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "   ",
        "ftp://host/x",
        "gopher://host/x",
        "javascript:alert(1)",
        "s3://",
        "s3://UPPER/x",
        "s3://bucket/a/../b",
        "s3://bucket/key?x=1",
        "https://user:pw@example.com/x.safetensors",
        "https:///nohost",
        "https://example.com:99999/x",
        "https://example.com/a/../etc/passwd",
        "https://example.com/a%2f..%2fb",
        "https://exa\\mple.com/x",
        "https://example.com/x\x00y",
        "hf://org/../name",
        "hf://org/name@../../x",
        "hf://org/na me",
        "file://remotehost/etc/passwd",
        "file:relative/path",
        "s3://bucket/" + "k" * 5000,
    ],
)
def test_malformed_uris_are_invalid(uri: str) -> None:
    with pytest.raises(InvalidURI) as info:
        parse_model_uri(uri, allowed_file_roots=[])
    assert info.value.code == "invalid_uri" and info.value.message


def test_http_needs_explicit_allowance() -> None:
    with pytest.raises(URINotAllowed):
        parse_model_uri("http://example.com/x.safetensors", allowed_file_roots=[])
    assert parse_model_uri("http://example.com/x.gguf", allowed_file_roots=[], allow_http=True).scheme == "http"


def test_scheme_allow_list_from_settings() -> None:
    with pytest.raises(URINotAllowed) as info:
        parse_model_uri("hf://org/name", allowed_file_roots=[], allowed_schemes=["s3", "https"])
    assert info.value.code == "uri_not_allowed"


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "localhost",
        "0.0.0.0",
    ],
)
def test_literal_private_hosts_refused_at_parse_time(host: str) -> None:
    with pytest.raises(URINotAllowed):
        parse_model_uri(f"https://{host}/model.safetensors", allowed_file_roots=[])


def test_literal_loopback_allowed_when_configured() -> None:
    p = parse_model_uri("https://127.0.0.1:9/x.gguf", allowed_file_roots=[], allow_private_hosts=["127.0.0.0/8"])
    assert p.host == "127.0.0.1"


def test_file_uri_under_root(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    p = parse_model_uri(f"file://{root}/m", allowed_file_roots=[root])
    assert p.local_path == (root / "m").resolve()


def test_file_uri_outside_roots_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    bad = [
        f"file://{tmp_path}/secret",
        f"file://{root}/../secret",
        f"file://{root}/link",
        "file:///etc/passwd",
    ]
    for uri in bad:
        with pytest.raises(URINotAllowed) as info:
            parse_model_uri(uri, allowed_file_roots=[root])
        assert info.value.code == "uri_not_allowed"
    with pytest.raises(URINotAllowed):
        parse_model_uri(f"file://{root}", allowed_file_roots=[])  # no roots configured: file:// is off


def test_errors_are_domain_errors() -> None:
    from presso.compression.errors import CompressionError
    from presso.fetch.api import TransientFetchError

    assert issubclass(FetchError, CompressionError)
    assert not issubclass(TransientFetchError, CompressionError)


def test_package_is_torch_free() -> None:
    code = "import sys, presso.fetch.api, presso.fetch.uri; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- IP literals: every form inet_aton reads, parsed once (fetch/hosts.py) ------------------------


@pytest.mark.parametrize(
    "host",
    [
        "0177.0.0.1",  # octal
        "2130706433",  # one decimal integer
        "0x7f000001",  # one hex integer
        "0X7F.1",  # hex, short form
        "127.1",  # short form
        "127.0.1",
        "0x7f.0.0.01",  # mixed
        "017700000001",  # one octal integer
        "000000000177.0.0.1",
        "127.0.0.1.",  # trailing dot
        "0xa9.0xfe.0xa9.0xfe",  # 169.254.169.254
        "0",  # 0.0.0.0
    ],
)
def test_every_ipv4_literal_form_is_parsed_and_guarded(host: str) -> None:
    with pytest.raises(URINotAllowed) as info:
        parse_model_uri(f"https://{host}:8443/model.safetensors", allowed_file_roots=[])
    assert info.value.code == "uri_not_allowed"


def test_ipv4_literal_forms_match_the_c_library() -> None:
    import socket

    from presso.fetch.hosts import inet_aton

    cases = [
        "0177.0.0.1", "2130706433", "0x7f000001", "127.1", "0x7f.1", "1.2.3.4.5", "999.1.1.1", "0x", "09.1.1.1",
        "08", "00", "1.2.3.256", "1.2.65535", "1.2.65536", "1.16777215", "1.16777216", "4294967295",
        "4294967296", "0xffffffff", "0x100000000", "0X7F.1", "1..2", ".1.2", "1.2.3.", "017777777777",
        "0377.0377.0377.0377", "0400.1.1.1", "0xAbC", "1.0x", "1.2.3.4x", "0x1g", "0x0000000000007f.1",
    ]  # fmt: skip
    for text in cases:
        try:
            expected: str | None = socket.inet_ntoa(socket.inet_aton(text))
        except OSError:
            expected = None
        got = inet_aton(text)
        assert (str(got) if got is not None else None) == expected, text


def test_ip_literal_url_is_canonical_for_the_fetcher() -> None:
    """The URL handed to the HTTP client names the checked address itself (httpx cannot parse 0177.0.0.1)."""
    p = parse_model_uri(
        "https://0177.0.0.1:8443/m/model.safetensors?sig=1#f", allowed_file_roots=[],
        allow_private_hosts=["127.0.0.0/8"],
    )
    assert (p.host, p.port, p.url) == ("127.0.0.1", 8443, "https://127.0.0.1:8443/m/model.safetensors?sig=1")
    public = parse_model_uri("https://134744072/model.safetensors", allowed_file_roots=[])
    assert (public.host, public.url) == ("8.8.8.8", "https://8.8.8.8/model.safetensors")
    assert parse_model_uri("https://0x08080808/x.gguf", allowed_file_roots=[]).host == "8.8.8.8"


@pytest.mark.parametrize(
    "uri",
    [
        "https://999.1.1.1/x.safetensors",  # numeric, but no address: neither a name nor an IP
        "https://1.2.3.4.5/x.safetensors",
        "https://09.1.1.1/x.safetensors",  # 9 is no octal digit
        "https://1.2.3.0x/x.safetensors",
        "https://%31%32%37.0.0.1/x.safetensors",
        "https://[::ffff:0177.0.0.1]/x.safetensors",  # urlsplit raises ValueError: was an unhandled error
        "https://[::1/x.safetensors",
        "https://[fe80::zz]/x.safetensors",
        "https://exa mple.com/x.safetensors",
        "https://a..b.example.com/x.safetensors",
        "https://ex<ample.com/x.safetensors",
    ],
)
def test_hosts_the_fetcher_cannot_use_are_invalid(uri: str) -> None:
    with pytest.raises(InvalidURI) as info:
        parse_model_uri(uri, allowed_file_roots=[], allow_private_hosts=["127.0.0.0/8", "::/0"])
    assert info.value.code == "invalid_uri"


def test_uri_and_guard_import_without_a_cycle() -> None:
    """uri.py needs no guard (the address rules live in hosts.py); guard.py imports uri.py at the top."""
    code = "import sys, presso.fetch.uri; print('presso.fetch.guard' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    code = "import presso.fetch.guard as g; assert g.parse_model_uri"
    subprocess.run([sys.executable, "-c", code], check=True)
