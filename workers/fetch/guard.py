"""SSRF guard and a pinned, capped HTTP client.

Every hop (the first URL and each redirect) is parsed, its host resolved once, every resolved address
checked, and the connection then made to that checked address: the network backend below connects
only to pinned addresses and never resolves a name itself, so DNS rebinding between check and connect
is impossible. TLS still uses the URL's host name for SNI and certificate verification.
"""

from __future__ import annotations

import ipaddress
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

from presso.workers.fetch.errors import (
    FetchError,
    FetchTimeout,
    NotFoundError,
    TransientFetchError,
    URINotAllowed,
)
from presso.workers.fetch.limits import Budget, FetchLimits

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_REDIRECTS = (301, 302, 303, 307, 308)


@lru_cache(maxsize=64)
def _parse_allowances(entries: tuple[str, ...]) -> tuple[tuple[Any, ...], frozenset[str]]:
    networks, names = [], set()
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return tuple(networks), frozenset(names)


def _embedded_v4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    elif int(addr) >> 32 == 0 and int(addr) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if any(addr in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)
    return found


def _is_public(addr: IPAddress) -> bool:
    if any(addr.version == net.version and addr in net for net in _BLOCKED):
        return False
    flags = (addr.is_loopback, addr.is_private, addr.is_link_local, addr.is_multicast, addr.is_reserved)
    return addr.is_global and not any(flags) and not addr.is_unspecified


def is_allowed_address(addr: IPAddress, allow_private_hosts: Iterable[str] = ()) -> bool:
    """True when ``addr`` is public, or explicitly allowed by a CIDR in ``allow_private_hosts``.

    IPv4-mapped and IPv4-compatible IPv6 addresses are judged by their IPv4 address; NAT64, 6to4
    and Teredo addresses must pass both as IPv6 and for the IPv4 address they embed.
    """
    networks, _ = _parse_allowances(tuple(allow_private_hosts))
    if isinstance(addr, ipaddress.IPv6Address):
        addr = ipaddress.IPv6Address(int(addr))  # drop any %scope
        embedded = _embedded_v4(addr)
        mapped = addr.ipv4_mapped is not None or (int(addr) >> 32 == 0 and int(addr) > 1)
        candidates: list[IPAddress] = [*embedded] if mapped else [addr, *embedded]
    else:
        candidates = [addr]

    def ok(a: IPAddress) -> bool:
        return any(a.version == n.version and a in n for n in networks) or _is_public(a)

    return all(ok(a) for a in candidates)


def resolve_checked(host: str, port: int, allow_private_hosts: Iterable[str] = ()) -> str:
    """Resolve ``host`` once and return the address to connect to; refuse non-public addresses."""
    allowances = tuple(allow_private_hosts)
    _, names = _parse_allowances(allowances)
    host = host.lower().strip("[]").rstrip(".")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
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
            if not is_allowed_address(ipaddress.ip_address(text), allowances):
                raise URINotAllowed(
                    f"host {host!r} resolves to {text}, a loopback, private, link-local or reserved address"
                )
    return infos[0]


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


class SafeHttp:
    """GET with per-hop SSRF checks, manual redirects, byte caps and the fetch's overall deadline."""

    def __init__(self, limits: FetchLimits, budget: Budget) -> None:
        self.limits = limits
        self.budget = budget
        self._pins: dict[str, str] = {}
        headers = {"Accept-Encoding": "identity", "User-Agent": "presso-fetch/1"}
        self._client = httpx.Client(
            transport=_PinnedTransport(self._pins), follow_redirects=False, trust_env=False, headers=headers
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SafeHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _vet(self, url: str) -> None:
        from presso.workers.fetch.uri import parse_model_uri

        parsed = parse_model_uri(
            url, allow_http=self.limits.allow_http, allow_private_hosts=self.limits.allow_private_hosts
        )
        if parsed.scheme not in ("https", "http") or parsed.host is None:
            raise URINotAllowed(f"redirect to a non-http(s) location {url!r} is not allowed")
        # Pin under the name httpcore will ask for: the ASCII (IDNA) host, without a trailing dot.
        key = httpx.URL(url).raw_host.decode("ascii").lower().rstrip(".")
        if key not in self._pins:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            self._pins[key] = resolve_checked(key, port, self.limits.allow_private_hosts)

    @contextmanager
    def open(self, url: str, *, headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        current = url
        for _ in range(self.limits.max_redirects + 1):
            self._vet(current)
            left = self.budget.remaining_s()
            timeout = httpx.Timeout(left, connect=min(left, 30.0))
            with _mapped_errors(current):
                request = self._client.build_request("GET", current, headers=headers, timeout=timeout)
                resp = self._client.send(request, stream=True)
            if resp.status_code in _REDIRECTS:
                location = resp.headers.get("location")
                resp.close()
                if not location:
                    raise FetchError(f"{current} redirected without a Location")
                log.info("fetch redirect %s -> %s", current, location)
                current = urljoin(current, location)
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
