"""https:// source: one .safetensors/.gguf file, or a directory described by ``presso-files.txt``.

A URL whose path ends with ``/`` (or names ``presso-files.txt`` itself) is a directory: Presso reads
``<url>presso-files.txt``, a UTF-8 list of relative file names, one per line (blank lines and lines
starting with ``#`` ignored), and fetches each ``<url><name>``. Every request goes through
:class:`presso.fetch.guard.SafeHttp` (SSRF checks per hop, pinned address, caps, deadline).
"""

from __future__ import annotations

from typing import BinaryIO
from urllib.parse import quote, urljoin

from presso.fetch.errors import FetchError, TooLarge
from presso.fetch.guard import SafeHttp
from presso.fetch.limits import Budget
from presso.fetch.model_files import PEEK_BYTES, check_name, check_single_name
from presso.fetch.uri import ParsedURI

FILE_LIST = "presso-files.txt"
MAX_LIST_BYTES = 1 << 20


class HttpSource:
    def __init__(self, http: SafeHttp, urls: dict[str, str]) -> None:
        self.http = http
        self.urls = urls

    def read_prefix(self, name: str, nbytes: int) -> tuple[bytes, int | None]:
        return self.http.read_prefix(self.urls[name], nbytes)

    def identity(self, name: str) -> str | None:
        return self.http.identity(self.urls[name])

    def download(self, name: str, out: BinaryIO, budget: Budget) -> int:
        return self.http.download(self.urls[name], name, out)


def parse_file_list(data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FetchError(f"{FILE_LIST} is not UTF-8 text") from exc
    names: list[str] = []
    for line in text.splitlines():
        name = line.strip()
        if name and not name.startswith("#") and name not in names:
            names.append(check_name(name))
    if not names:
        raise FetchError(f"{FILE_LIST} lists no files")
    return names


def http_model_source(parsed: ParsedURI, http: SafeHttp) -> tuple[HttpSource, list[tuple[str, int | None]], str | None]:
    """(source, listing, single file name or None) for an http(s) model URI."""
    assert parsed.url is not None and parsed.path is not None
    name = parsed.name
    if parsed.path.endswith("/") or name == FILE_LIST:
        list_url = parsed.url if name == FILE_LIST else urljoin(parsed.url, FILE_LIST)
        data, _ = http.read_prefix(list_url, MAX_LIST_BYTES + 1)
        if len(data) > MAX_LIST_BYTES:
            raise TooLarge(f"{FILE_LIST} is over {MAX_LIST_BYTES} bytes")
        names = parse_file_list(data)
        urls = {n: urljoin(list_url, quote(n)) for n in names}
        return HttpSource(http, urls), [(n, None) for n in names], None
    url = parsed.url
    check_single_name(name, peek=lambda _: http.read_prefix(url, PEEK_BYTES)[0])
    return HttpSource(http, {name: url}), [(name, None)], name
