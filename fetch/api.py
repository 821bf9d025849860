"""Bring a user's model and data files into a job-scoped directory, safely. Torch-free.

``presso.fetch`` is a library of its own (the API checks URIs with it at submit, the worker and the CLI
fetch with it); this module is its public API (the folder is a namespace package, no ``__init__``).

Public API::

    parse_model_uri(uri, *, allowed_file_roots, allow_http=False, ...) -> ParsedURI
    fetch_model(uri, dest, limits, cache=None) -> Path    # model dir, or the single weights file
    fetch_model_report(uri, dest, limits, cache=None) -> FetchResult
    # cache: a presso.fetch.cache.ModelCache, a worker's model cache (docs/model-cache.md)
    fetch_file(uri, dest, limits) -> Path             # calibration / evaluation data
    safetensors_header_params(path_or_bytes) -> int

Errors are ``FetchError`` subclasses (a ``CompressionError``: the job fails, no retry) with ``code``
and ``message``, except ``TransientFetchError`` (network trouble: the worker retries).
See docs/uris.md for the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.fetch.errors import (
    FetchError,
    FetchTimeout,
    InvalidURI,
    ModelFileCorrupt,
    ModelTooLargeError,
    NotFoundError,
    TooLarge,
    TransientFetchError,
    UnsafeModelFile,
    URINotAllowed,
)
from presso.fetch.limits import Budget, FetchLimits
from presso.fetch.model_files import (
    PEEK_BYTES,
    check_name,
    check_single_name,
    classify,
    safetensors_header_params,
    select_model_files,
)
from presso.fetch.pipeline import FetchResult, precheck_sizes, prepare_dest, run_plan
from presso.fetch.uri import ParsedURI, parse_model_uri

if TYPE_CHECKING:
    from presso.fetch.cache import ModelCache

log = logging.getLogger(__name__)

__all__ = [
    "FetchError",
    "FetchLimits",
    "FetchResult",
    "FetchTimeout",
    "InvalidURI",
    "ModelFileCorrupt",
    "ModelTooLargeError",
    "NotFoundError",
    "ParsedURI",
    "TooLarge",
    "TransientFetchError",
    "URINotAllowed",
    "UnsafeModelFile",
    "fetch_file",
    "fetch_model",
    "fetch_model_report",
    "parse_model_uri",
    "safetensors_header_params",
]


def _parse(uri: str, limits: FetchLimits) -> ParsedURI:
    return parse_model_uri(
        uri,
        allowed_file_roots=limits.allowed_file_roots,
        allow_http=limits.allow_http,
        allow_private_hosts=limits.allow_private_hosts,
    )


def _peek(source: Any) -> Callable[[str], bytes]:
    """The first bytes of a source's file: what a refused pickle-suffixed file turns out to be."""
    return lambda name: bytes(source.read_prefix(name, PEEK_BYTES)[0])


def _open_source(
    parsed: ParsedURI, limits: FetchLimits, budget: Budget, stack: ExitStack
) -> tuple[Any, list[tuple[str, int | None]], str | None]:
    """(source, listing, single file name or None) for any scheme."""
    if parsed.scheme == "s3":
        from presso.fetch.s3 import S3Source, make_client

        key = parsed.key or ""
        base = key.rsplit("/", 1)[-1]
        if base and classify(check_name(base)) in ("weights", "pickle"):
            s3_single = S3Source(make_client(limits), parsed.bucket or "", key[: len(key) - len(base)])
            check_single_name(base, peek=_peek(s3_single))
            return s3_single, [(base, s3_single.head(base))], base
        prefix = key.rstrip("/") + "/" if key else ""
        source = S3Source(make_client(limits), parsed.bucket or "", prefix)
        return source, source.list_prefix(max_entries=limits.max_files * 4 + 1000), None
    if parsed.scheme in ("https", "http"):
        from presso.fetch.guard import SafeHttp
        from presso.fetch.web import http_model_source

        http = stack.enter_context(SafeHttp(limits, budget))
        return http_model_source(parsed, http)
    from presso.fetch.local import LocalSource, local_source

    if parsed.scheme == "hf":
        from presso.fetch.hf import hf_snapshot

        snapshot, roots = hf_snapshot(parsed, limits)
        hf_source = LocalSource(snapshot, roots)
        return hf_source, hf_source.list_dir(), None
    assert parsed.local_path is not None
    local, single = local_source(parsed.local_path, limits.allowed_file_roots)
    return local, ([(single, None)] if single else local.list_dir()), single


def fetch_model_report(uri: str, dest: Path, limits: FetchLimits, cache: ModelCache | None = None) -> FetchResult:
    """Fetch a model into the empty directory ``dest``; return what was fetched, skipped and sanitized.

    With ``cache``, a source with an immutable identity (s3, http(s) with ETag/Last-Modified) is served from it:
    the listing and the key are read through the same guarded clients, a miss downloads through the same plan."""
    parsed = _parse(uri, limits)
    dest = prepare_dest(dest)
    budget = Budget(limits)
    with ExitStack() as stack:
        source, entries, single = _open_source(parsed, limits, budget, stack)
        skipped: list[str] = []
        if single is not None:
            check_single_name(single, peek=_peek(source))
            files = entries
        else:
            selection = select_model_files(entries, max_files=limits.max_files, peek=_peek(source))
            files, skipped = selection.files, selection.skipped
        key = None
        if cache is not None:
            from presso.fetch.cached import cache_key

            precheck_sizes(files, limits)
            key = cache_key(parsed, source, files, single, limits)
        if key is not None:
            from presso.fetch.cached import fetch_cached

            assert cache is not None
            result = fetch_cached(cache, key, source, files, dest, limits, budget)
        else:
            result = run_plan(source, files, dest, limits, budget)
    result.skipped = skipped
    if single is not None:
        result.path = dest / single
    log.info("fetched model %s into %s%s", uri, result.path, f" (model cache {result.cache})" if result.cache else "")
    return result


def fetch_model(uri: str, dest: Path, limits: FetchLimits, cache: ModelCache | None = None) -> Path:
    """Fetch a model; return the model directory, or the single .safetensors/.gguf file inside ``dest``."""
    return fetch_model_report(uri, dest, limits, cache).path


def _data_name(name: str) -> str:
    try:
        return check_name(name) if name and "/" not in name else "data"
    except UnsafeModelFile:
        return "data"


def fetch_file(uri: str, dest: Path, limits: FetchLimits) -> Path:
    """Fetch one data file (calibration or evaluation text) into the directory ``dest``; return its path."""
    parsed = _parse(uri, limits)
    if parsed.scheme == "hf":
        raise InvalidURI("hf:// names a model; data files come from s3://, https:// or file://")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest.resolve() / _data_name(parsed.name)
    budget = Budget(limits)
    with target.open("xb") as out:  # never overwrite: a clash is the caller's bug
        try:
            with ExitStack() as stack:
                _download_one(parsed, limits, budget, stack, out)
        except BaseException:
            out.close()
            target.unlink(missing_ok=True)
            raise
    log.info("fetched data %s into %s (%d bytes)", uri, target, budget.total_bytes)
    return target


def _download_one(parsed: ParsedURI, limits: FetchLimits, budget: Budget, stack: ExitStack, out: Any) -> None:
    if parsed.scheme == "s3":
        from presso.fetch.s3 import S3Source, make_client

        key = parsed.key or ""
        if not key or key.endswith("/"):
            raise InvalidURI("a data URI must name one S3 object, not a prefix")
        base = key.rsplit("/", 1)[-1]
        S3Source(make_client(limits), parsed.bucket or "", key[: len(key) - len(base)]).download(base, out, budget)
    elif parsed.scheme in ("https", "http"):
        from presso.fetch.guard import SafeHttp

        assert parsed.url is not None
        http = stack.enter_context(SafeHttp(limits, budget))
        http.download(parsed.url, parsed.name or "data", out)
    else:
        from presso.fetch.local import local_source

        assert parsed.local_path is not None
        source, single = local_source(parsed.local_path, limits.allowed_file_roots)
        if single is None:
            raise InvalidURI("a data URI must name one file, not a directory")
        source.download(single, out, budget)
