"""Parse and vet a model or data URI. Cheap, torch-free and offline: the API calls it at submit time.

Accepted forms::

    s3://bucket/prefix-or-key
    https://host[:port]/path[?query]     (http:// only when explicitly allowed)
    hf://org/name[@revision]
    file:///absolute/path                (only under an allowed root, after resolving symlinks and ..)

Host names are not resolved here (that happens at fetch time, in :mod:`presso.fetch.guard`), but an
IP-literal host or ``localhost`` that the SSRF guard would refuse is refused already at parse time. IP
literals in any form ``inet_aton`` reads (``0177.0.0.1``, ``2130706433``, ``0x7f.1``, ``127.1``) are parsed
by :func:`presso.fetch.hosts.ip_literal`, and ``ParsedURI.url`` names the address in its canonical
form, so the fetcher's HTTP client connects to exactly the address that was checked. Every URL this
accepts is one the fetcher's HTTP client can parse: what it could not is ``invalid_uri`` here, at submit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from presso.fetch.errors import InvalidURI, URINotAllowed
from presso.fetch.hosts import IPAddress, check_host_name, ip_literal, is_allowed_address, url_host

SCHEMES = ("s3", "https", "hf", "file")
MAX_URI_CHARS = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_HF_PART = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,95}"
_HF_REPO = re.compile(rf"^{_HF_PART}(/{_HF_PART})?$")
_HF_REVISION = re.compile(r"^[A-Za-z0-9._\-][A-Za-z0-9._/\-]{0,127}$")


@dataclass(frozen=True)
class ParsedURI:
    scheme: str
    uri: str
    bucket: str | None = None
    key: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    url: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    local_path: Path | None = None

    @property
    def name(self) -> str:
        """Last path segment (file name) of the location, '' for a directory-like URI."""
        if self.scheme == "s3":
            return (self.key or "").rsplit("/", 1)[-1]
        if self.scheme in ("https", "http"):
            return unquote((self.path or "").rsplit("/", 1)[-1])
        if self.scheme == "file" and self.local_path is not None:
            return self.local_path.name
        return ""


def _split(uri: str) -> SplitResult:
    """urlsplit, with its ValueError (a bad bracketed host, an invalid port) as InvalidURI."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidURI(f"malformed URI {uri!r}: {exc}") from None
    return parts


def _has_dotdot(path: str) -> bool:
    return any(part == ".." for part in path.replace("\\", "/").split("/"))


def parse_model_uri(
    uri: str,
    *,
    allowed_file_roots: Sequence[Path] = (),
    allow_http: bool = False,
    allowed_schemes: Iterable[str] | None = None,
    allow_private_hosts: Iterable[str] = (),
) -> ParsedURI:
    """Parse ``uri``; raise :class:`InvalidURI` when malformed, :class:`URINotAllowed` when refused."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidURI("model URI must be a non-empty string")
    if len(uri) > MAX_URI_CHARS:
        raise InvalidURI(f"URI is longer than {MAX_URI_CHARS} characters")
    if _CONTROL.search(uri):
        raise InvalidURI("URI contains control characters or backslashes")
    uri = uri.strip()
    scheme, sep, _ = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (*SCHEMES, "http"):
        raise InvalidURI(f"unsupported URI scheme in {uri!r}; use one of s3://, https://, hf://, file://")
    if scheme == "http" and not allow_http:
        raise URINotAllowed("plain http:// is not allowed; use https://")
    if allowed_schemes is not None and scheme not in {s.lower() for s in allowed_schemes}:
        if not (scheme == "http" and allow_http):
            raise URINotAllowed(f"{scheme}:// URIs are not allowed on this server")
    if scheme == "s3":
        return _parse_s3(uri)
    if scheme == "hf":
        return _parse_hf(uri)
    if scheme == "file":
        return _parse_file(uri, allowed_file_roots)
    return _parse_http(uri, scheme, tuple(allow_private_hosts))


def _parse_s3(uri: str) -> ParsedURI:
    parts = _split(uri)
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidURI(f"invalid S3 bucket name {bucket!r}")
    if parts.query or parts.fragment:
        raise InvalidURI("s3:// URIs take no query or fragment")
    key = parts.path.lstrip("/")
    if _has_dotdot(key) or "//" in key:
        raise InvalidURI("S3 key must not contain '..' segments or empty segments")
    return ParsedURI(scheme="s3", uri=uri, bucket=bucket, key=key)


def _parse_hf(uri: str) -> ParsedURI:
    rest = uri[len("hf://") :]
    repo_id, _, revision = rest.partition("@")
    repo_id = repo_id.strip("/")
    if not _HF_REPO.match(repo_id) or ".." in repo_id or "--" in repo_id or repo_id.endswith(".git"):
        raise InvalidURI(f"invalid Hugging Face repo id {repo_id!r}; expected hf://org/name[@revision]")
    revision = revision or "main"
    if not _HF_REVISION.match(revision) or _has_dotdot(revision):
        raise InvalidURI(f"invalid Hugging Face revision {revision!r}")
    return ParsedURI(scheme="hf", uri=uri, repo_id=repo_id, revision=revision)


def _parse_file(uri: str, allowed_file_roots: Sequence[Path]) -> ParsedURI:
    parts = _split(uri)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise InvalidURI("file URIs must look like file:///absolute/path")
    raw = unquote(parts.path)
    if not raw.startswith("/") or "\x00" in raw:
        raise InvalidURI("file URI path must be absolute")
    resolved = Path(raw).resolve(strict=False)
    if not is_under_roots(resolved, allowed_file_roots):
        raise URINotAllowed(f"{raw} is not under an allowed local root")
    return ParsedURI(scheme="file", uri=uri, path=raw, local_path=resolved)


def is_under_roots(path: Path, roots: Sequence[Path]) -> bool:
    """True when the (already resolved) ``path`` is inside one of ``roots`` (resolved here)."""
    for root in roots:
        real_root = Path(root).expanduser().resolve(strict=False)
        if path == real_root or path.is_relative_to(real_root):
            return True
    return False


def _parse_http(uri: str, scheme: str, allow_private_hosts: tuple[str, ...]) -> ParsedURI:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"invalid host or port in {uri!r}: {exc}") from None
    if "@" in parts.netloc:
        raise InvalidURI("credentials in the URL are not allowed")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise InvalidURI(f"URI {uri!r} has no host")
    if port == 0:
        raise InvalidURI("port 0 is not a valid port")
    addr = ip_literal(host)
    if addr is None:
        check_host_name(host)
    _refuse_literal_host(host, addr, allow_private_hosts)
    path = parts.path or "/"
    if _has_dotdot(unquote(path)):
        raise InvalidURI("URL path must not contain '..' segments")
    if addr is not None:  # the address in its one canonical spelling: what the guard checks and pins
        host = str(addr)
        parts = parts._replace(netloc=url_host(addr) + (f":{port}" if port is not None else ""))
    url = parts._replace(scheme=scheme, fragment="").geturl()
    _check_client_parses(url)
    return ParsedURI(scheme=scheme, uri=uri, host=host, port=port, path=path, url=url)


def _check_client_parses(url: str) -> None:
    """The fetcher's HTTP client (httpx) must accept ``url``; a URL it refuses is invalid now, not a failed job."""
    import httpx  # the API has httpx too; imported here so that s3/hf/file parsing stays light

    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidURI(f"invalid URL {url!r}: {exc}") from None


def _refuse_literal_host(host: str, addr: IPAddress | None, allow_private_hosts: tuple[str, ...]) -> None:
    if host in allow_private_hosts:
        return
    if addr is None and (host == "localhost" or host.endswith(".localhost")):
        addr = ip_literal("127.0.0.1")
    if addr is not None and not is_allowed_address(addr, allow_private_hosts):
        shown = host if host == str(addr) else f"{host} ({addr})"
        raise URINotAllowed(f"address {shown} is not allowed (private, loopback, link-local or reserved)")
