"""Host names and IP addresses: one parser of IP-literal hosts and the SSRF address rules. Offline.

Both the submit-time URI check (:mod:`presso.fetch.uri`) and the fetch-time guard
(:mod:`presso.fetch.guard`) use these functions, so a host means the same address in both.

IPv4 literals are read the way the C library's ``inet_aton`` reads them (and so the way a resolver
would): one to four dot-separated parts, each decimal, octal (leading ``0``) or hex (``0x``), the last
part filling the remaining bytes. ``127.0.0.1``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``, ``2130706433``
and ``0x7f000001`` are all loopback. A host whose last label is numeric but which is no such address
(``999.1.1.1``, ``1.2.3.4.5``, ``09.1.1.1``) is invalid: it is no DNS name either (no top-level
domain is numeric), and HTTP clients refuse it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from presso.fetch.errors import InvalidURI

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

# inet_aton's parts: hex (0x + at least one digit), octal (a leading 0), decimal.
_V4_PART = re.compile(r"^(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")
# WHATWG's "ends in a number": a last label like this makes the host an IPv4 literal or nothing.
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0[xX][0-9a-fA-F]*)$")
# What a host name may contain once IDNA-encoded (underscores occur in the wild; resolvers accept them).
_NAME = re.compile(r"^[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?$")


def inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``text`` names under the C library's ``inet_aton`` rules, or None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_V4_PART.match(p) for p in parts):
        return None
    values = [int(p[2:], 16) if p[:2] in ("0x", "0X") else int(p, 8) if p[0] == "0" else int(p) for p in parts]
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = last
    for i, v in enumerate(head):
        value |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def ip_literal(host: str) -> IPAddress | None:
    """The address an IP-literal ``host`` names, or None when ``host`` is a name to resolve.

    ``host`` is a URL's host without brackets (``urlsplit(...).hostname``, lower case, one trailing
    dot allowed). Raises :class:`InvalidURI` for a host that is neither a valid name nor a valid
    address: a malformed IPv6 literal, or a numeric-looking IPv4 that ``inet_aton`` refuses.
    """
    host = host.strip("[]")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidURI(f"invalid IPv6 address {host!r}") from None
    bare = host[:-1] if host.endswith(".") else host
    if not _NUMERIC_LABEL.match(bare.rsplit(".", 1)[-1]):
        return None
    addr = inet_aton(bare)
    if addr is None:
        raise InvalidURI(f"invalid IPv4 address {host!r}")
    return addr


def check_host_name(host: str) -> str:
    """Return the ASCII (IDNA) form of a host name; raise :class:`InvalidURI` for an impossible one."""
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidURI(f"invalid host name {host!r}") from exc
    labels = ascii_host[:-1].split(".") if ascii_host.endswith(".") else ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_NAME.match(label) for label in labels):
        raise InvalidURI(f"invalid host name {host!r}")
    return ascii_host


def url_host(addr: IPAddress) -> str:
    """``addr`` as a URL writes it: ``127.0.0.1``, ``[::1]``."""
    return f"[{addr}]" if addr.version == 6 else str(addr)


@lru_cache(maxsize=64)
def parse_allowances(entries: tuple[str, ...]) -> tuple[tuple[Any, ...], frozenset[str]]:
    """(CIDR networks, host names) of an ``allow_private_hosts`` list."""
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
    networks, _ = parse_allowances(tuple(allow_private_hosts))
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
