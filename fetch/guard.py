"""SSRF guard and a pinned, capped HTTP client.

Every hop (the first URL and each redirect) is parsed, its host resolved once, every resolved address
checked, and the connection then made to that checked address: the network backend below connects
only to pinned addresses and never resolves a name itself, so DNS rebinding between check and connect
is impossible. TLS still uses the URL's host name for SNI and certificate verification.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urljoin

import httpcore
import httpx

from presso.fetch.errors import (
    FetchError,
    FetchTimeout,
    InvalidURI,
    NotFoundError,
    TransientFetchError,
    URINotAllowed,
)
from presso.fetch.hosts import IPAddress, ip_literal, is_allowed_address, parse_allowances
from presso.fetch.limits import Budget, FetchLimits
from presso.fetch.uri import parse_model_uri

log = logging.getLogger(__name__)

_REDIRECTS = (301, 302, 303, 307, 308)
__all__ = ["SafeHttp", "is_allowed_address", "resolve_checked"]


def resolve_checked(host: str, port: int, allow_private_hosts: Iterable[str] = ()) -> str:
    """Resolve ``host`` once and return the address to connect to; refuse non-public addresses."""
    allowances = tuple(allow_private_hosts)
    _, names = parse_allowances(allowances)
    host = host.lower().strip("[]").rstrip(".")
    literal: IPAddress | None = ip_literal(host)  # the same reading of IP literals as at submit
    if literal is not None:
        infos = [str(literal)]
    else:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise TransientFetchError(f"temporary DNS failure resolving {host}") from exc
            raise FetchError(f"could not resolve host {host!r}") from exc
        infos = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not infos:
        raise FetchError(f"host {host!r} has no addresses")
    if host not in names:
        for text in infos:
            if not is_allowed_address(_address(text), allowances):
                raise URINotAllowed(
                    f"host {host!r} resolves to {text}, a loopback, private, link-local or reserved address"
                )
    return infos[0]


def _address(text: str) -> IPAddress:
    addr = ip_literal(text)
    if addr is None:  # getaddrinfo answers with numeric addresses only
        raise FetchError(f"resolver returned a non-address {text!r}")
    return addr


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the address pinned for a host; never resolves names itself."""

    def __init__(self, pins: dict[str, str]) -> None:
        self._pins = pins
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        address = self._pins.get(host.lower().strip("[]").rstrip("."))
        if address is None:
            raise httpcore.ConnectError(f"refusing to connect to unvetted host {host!r}")
        return self._backend.connect_tcp(address, port, timeout, local_address, socket_options)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """Verifying TLS context (certifi CAs), built once per process: loading the CAs is slow."""
    return httpx.create_ssl_context(trust_env=False)


class _PinnedTransport(httpx.HTTPTransport):
    def __init__(self, pins: dict[str, str]) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False, retries=0)
        # httpx.HTTPTransport takes no network backend, so swap in a pool that uses ours; the rest of
        # the transport (request/response mapping, exception mapping) is httpx's own.
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=4,
            retries=0,
            network_backend=_PinnedBackend(pins),
        )


def _raise_for_status(resp: httpx.Response, url: str) -> None:
    code = resp.status_code
    if code in (200, 206):
        return
    if code in (404, 410):
        raise NotFoundError(f"{url} was not found (HTTP {code})")
    if code == 429 or code >= 500:
        raise TransientFetchError(f"{url} answered HTTP {code}")
    raise FetchError(f"{url} answered HTTP {code}")


@contextmanager
def _mapped_errors(url: str) -> Iterator[None]:
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise TransientFetchError(f"timed out connecting to {url}") from exc
    except httpx.TimeoutException as exc:
        raise FetchTimeout(f"timed out reading {url}") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise TransientFetchError(f"network error fetching {url}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"could not fetch {url}: {exc}") from exc
    except httpx.InvalidURL as exc:  # not an HTTPError: unmapped, it would be retried as infrastructure
        raise InvalidURI(f"invalid URL {url!r}: {exc}") from exc


_LOCATION = "presso_location"


def _hold_location(resp: httpx.Response) -> None:
    """Move Location out of httpx's reach: with it, httpx parses the redirect target itself, and a target it
    cannot parse (``http://0177.0.0.1/``) becomes a protocol error, retried as if the network had failed.
    ``SafeHttp.open`` reads it instead and vets every hop with ``parse_model_uri``."""
    if "location" in resp.headers:
        resp.extensions[_LOCATION] = resp.headers["location"]
        del resp.headers["location"]


class SafeHttp:
    """GET with per-hop SSRF checks, manual redirects, byte caps and the fetch's overall deadline."""

    def __init__(self, limits: FetchLimits, budget: Budget) -> None:
        self.limits = limits
        self.budget = budget
        self._pins: dict[str, str] = {}
        headers = {"Accept-Encoding": "identity", "User-Agent": "presso-fetch/1"}
        self._client = httpx.Client(
            transport=_PinnedTransport(self._pins), follow_redirects=False, trust_env=False, headers=headers,
            event_hooks={"response": [_hold_location]},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SafeHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _vet(self, url: str) -> str:
        """Check one hop and pin its host's address; return the URL to request (IP literals canonical)."""
        parsed = parse_model_uri(
            url, allow_http=self.limits.allow_http, allow_private_hosts=self.limits.allow_private_hosts
        )
        if parsed.scheme not in ("https", "http") or parsed.host is None or parsed.url is None:
            raise URINotAllowed(f"redirect to a non-http(s) location {url!r} is not allowed")
        # Pin under the name httpcore will ask for: the ASCII (IDNA) host, without a trailing dot.
        try:
            key = httpx.URL(parsed.url).raw_host.decode("ascii").lower().rstrip(".")
        except httpx.InvalidURL as exc:  # parse_model_uri checked this already; never a retried job
            raise InvalidURI(f"invalid URL {url!r}: {exc}") from None
        if key not in self._pins:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            self._pins[key] = resolve_checked(key, port, self.limits.allow_private_hosts)
        return parsed.url

    @contextmanager
    def open(self, url: str, *, headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        current = url
        for _ in range(self.limits.max_redirects + 1):
            current = self._vet(current)
            left = self.budget.remaining_s()
            timeout = httpx.Timeout(left, connect=min(left, 30.0))
            with _mapped_errors(current):
                request = self._client.build_request("GET", current, headers=headers, timeout=timeout)
                resp = self._client.send(request, stream=True)
            if resp.status_code in _REDIRECTS:
                location = resp.extensions.get(_LOCATION)
                resp.close()
                if not location:
                    raise FetchError(f"{current} redirected without a Location")
                log.info("fetch redirect %s -> %s", current, location)
                try:
                    current = urljoin(current, location)
                except ValueError as exc:
                    raise InvalidURI(f"{current} redirected to a malformed location {location!r}") from exc
                continue
            try:
                _raise_for_status(resp, current)
                with _mapped_errors(current):
                    yield resp
            finally:
                resp.close()
            return
        raise FetchError(f"more than {self.limits.max_redirects} redirects fetching {url}")

    def read_prefix(self, url: str, nbytes: int) -> tuple[bytes, int | None]:
        """First ``nbytes`` of ``url`` (Range request; a server ignoring Range is cut off) and its size."""
        with self.open(url, headers={"Range": f"bytes=0-{max(nbytes - 1, 0)}"}) as resp:
            total = _total_size(resp)
            buf = bytearray()
            for chunk in resp.iter_bytes():
                buf += chunk
                if len(buf) >= nbytes:
                    break
                self.budget.remaining_s()
            return bytes(buf[:nbytes]), total

    def identity(self, url: str) -> str | None:
        """What names this version of ``url``: its strong ETag, else its Last-Modified, with its size (a one-byte
        ranged GET through the same checks); None when the server sends neither (then nothing is cached)."""
        with self.open(url, headers={"Range": "bytes=0-0"}) as resp:
            size = _total_size(resp)
            etag = resp.headers.get("etag", "")
            if etag and not etag.startswith("W/"):
                return f"etag {etag} size {size}"
            modified = resp.headers.get("last-modified")
            return f"last-modified {modified} size {size}" if modified else None

    def download(self, url: str, name: str, out: Any) -> int:
        """Stream ``url`` into the binary file object ``out`` under the budget; return bytes written."""
        with self.open(url) as resp:
            declared = resp.headers.get("content-length")
            self.budget.check_declared(name, int(declared) if declared and declared.isdigit() else None)
            written = 0
            for chunk in resp.iter_bytes():
                written += len(chunk)
                self.budget.consume(name, written, len(chunk))
                out.write(chunk)
            return written


def _total_size(resp: httpx.Response) -> int | None:
    content_range = resp.headers.get("content-range", "")
    if resp.status_code == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = resp.headers.get("content-length", "")
    return int(length) if resp.status_code == 200 and length.isdigit() else None
