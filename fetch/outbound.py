"""Outbound POSTs through the same SSRF guard as model fetches (webhooks: presso.workers.webhooks).

The URL is parsed by ``parse_model_uri`` (https only, http only where ``allow_http``), its host resolved once
and every address checked against ``allow_private_hosts``, and the connection made to that checked address
(no DNS rebinding between check and connect). Redirects are not followed: a 3xx is the receiver's answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from presso.fetch.errors import FetchError, URINotAllowed
from presso.fetch.guard import _PinnedTransport, resolve_checked
from presso.fetch.uri import ParsedURI, parse_model_uri

MAX_ANSWER_BYTES = 4096


def check_callback_url(url: str, *, allow_http: bool, allow_private_hosts: Iterable[str] = ()) -> ParsedURI:
    """Parse a callback URL (https://, or http:// where allowed) or raise URINotAllowed / InvalidURI."""
    parsed = parse_model_uri(url, allow_http=allow_http, allowed_schemes=("https",),
                             allow_private_hosts=tuple(allow_private_hosts))
    if parsed.scheme not in ("https", "http") or parsed.host is None or parsed.url is None:
        raise URINotAllowed("a callback URL is an https:// URL")
    return parsed


@dataclass(frozen=True)
class Answer:
    status: int
    body: str


def post_checked(url: str, body: bytes, headers: dict[str, str], *, allow_http: bool,
                 allow_private_hosts: Iterable[str] = (), timeout_s: float = 10.0) -> Answer:
    """POST ``body`` to ``url`` after the SSRF checks; the receiver's status and the start of its answer.
    FetchError (or a subclass) when the URL is refused or the connection fails."""
    allowances = tuple(allow_private_hosts)
    parsed = check_callback_url(url, allow_http=allow_http, allow_private_hosts=allowances)
    assert parsed.url is not None and parsed.host is not None
    key = httpx.URL(parsed.url).raw_host.decode("ascii").lower().rstrip(".")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    pins = {key: resolve_checked(key, port, allowances)}
    with httpx.Client(transport=_PinnedTransport(pins), follow_redirects=False, trust_env=False,
                      timeout=httpx.Timeout(timeout_s)) as client:
        try:
            with client.stream("POST", parsed.url, content=body, headers=headers) as resp:
                answer = b""
                for chunk in resp.iter_bytes():
                    answer += chunk
                    if len(answer) >= MAX_ANSWER_BYTES:
                        break
                return Answer(resp.status_code, answer[:MAX_ANSWER_BYTES].decode("utf-8", "replace"))
        except httpx.HTTPError as exc:
            raise FetchError(f"POST {parsed.url}: {type(exc).__name__}: {exc}") from None
