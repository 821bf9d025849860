"""The model cache behind the fetchers: the key comes from the guarded listing, a miss is filled by the same
fetch plan (caps, deadline, validation, sanitizing) into the cache's staging directory. docs/model-cache.md."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from presso.compression.version import presso_version
from presso.fetch.cache import Meta, ModelCache
from presso.fetch.errors import ModelTooLargeError, TooLarge
from presso.fetch.limits import Budget, FetchLimits
from presso.fetch.pipeline import FetchResult, run_plan
from presso.fetch.uri import ParsedURI

log = logging.getLogger(__name__)
KEY_FORMAT = 1


def cache_key(parsed: ParsedURI, source: Any, files: list[tuple[str, int | None]], single: str | None,
              limits: FetchLimits) -> str | None:
    """The content address of the files a fetch would bring, from their source's immutable identity, or None
    when the source has none (file://, hf://, an http(s) file without ETag or Last-Modified): not cached.

    s3: endpoint, bucket, prefix, and every selected object's name, size and ETag (from the listing or HEAD).
    http(s): the URI and every file's URL, strong ETag (else Last-Modified) and size. Presso's version is part of
    every key: a release whose fetch rules (selection, config sanitizing) changed never reuses older entries."""
    ident: list[list[Any]] = []
    if parsed.scheme == "s3":
        where: dict[str, Any] = {"endpoint": limits.s3_endpoint_url or "", "bucket": parsed.bucket,
                                 "prefix": source.prefix}
        for name, size in files:
            etag = source.etags.get(name)
            if not etag:
                return None
            ident.append([name, size, etag])
    elif parsed.scheme in ("https", "http"):
        where = {"url": parsed.url}
        for name, _ in files:
            version = source.identity(name)
            if version is None:
                log.info("model cache: %s has no ETag or Last-Modified, the model is not cached", name)
                return None
            ident.append([name, source.urls[name], version])
    else:
        return None  # file:// is local already; hf:// is the hub cache's (docs/model-cache.md)
    material = {"format": KEY_FORMAT, "presso": presso_version(), "scheme": parsed.scheme, "where": where,
                "single": single, "files": sorted(ident)}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def check_cached(meta: Meta, limits: FetchLimits) -> None:
    """The caps of this fetch on an entry fetched under other caps (the same errors as a download)."""
    if int(meta["largest_file"]) > limits.max_file_bytes:
        raise TooLarge(f"a model file is {meta['largest_file']} bytes, over the per-file limit of "
                       f"{limits.max_file_bytes}")
    if int(meta["total_bytes"]) > limits.max_total_bytes:
        raise TooLarge(f"model is {meta['total_bytes']} bytes, over the total limit of {limits.max_total_bytes}")
    params = int(meta["declared_params"])
    if limits.max_params is not None and params > limits.max_params:
        raise ModelTooLargeError(f"model declares {params:,} parameters, over the limit of {limits.max_params:,}")


def fetch_cached(cache: ModelCache, key: str, source: Any, files: list[tuple[str, int | None]], dest: Path,
                 limits: FetchLimits, budget: Budget) -> FetchResult:
    """``files`` into the empty directory ``dest`` through entry ``key`` of ``cache``."""

    def fill(staging: Path) -> Meta:
        result = run_plan(source, files, staging, limits, budget)
        largest = max((p.stat().st_size for p in staging.iterdir()), default=0)
        return {"files": result.files, "removed_config_keys": result.removed_config_keys,
                "total_bytes": result.total_bytes, "declared_params": result.declared_params,
                "largest_file": largest}

    sizes = [size for _, size in files]
    expected = sum(s for s in sizes if s is not None) if None not in sizes else None
    meta, hit = cache.fetch(key, dest, fill, accept=lambda m: check_cached(m, limits), expected_bytes=expected)
    return FetchResult(path=dest, files=list(meta["files"]), removed_config_keys=list(meta["removed_config_keys"]),
                       total_bytes=int(meta["total_bytes"]), declared_params=int(meta["declared_params"]),
                       cache="hit" if hit else "miss")
