"""s3:// source through boto3 (default credential chain; endpoint from the limits for MinIO/moto).

Downloads go through boto3's transfer manager: an object of ``limits.s3_part_bytes`` or more is fetched in
ranged parts, ``limits.s3_max_concurrency`` at a time, every part pinned to one ETag (``IfMatch``); every
byte is still accounted by the fetch's ``Budget`` (caps, deadline) as it arrives.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError
from s3transfer.subscribers import BaseSubscriber

from presso.fetch.errors import FetchError, NotFoundError, TooLarge, TransientFetchError
from presso.fetch.limits import Budget, FetchLimits
from presso.fetch.pipeline import copy_stream

log = logging.getLogger(__name__)
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "PreconditionFailed",  # the object changed under a pinned (IfMatch) download
    "412",
    "503",
    "500",
}


def make_client(limits: FetchLimits) -> Any:
    config = Config(
        connect_timeout=min(limits.timeout_s, 10.0),
        read_timeout=min(limits.timeout_s, 60.0),
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=max(10, limits.s3_max_concurrency),
    )
    return boto3.client("s3", endpoint_url=limits.s3_endpoint_url, region_name=limits.s3_region, config=config)


@contextmanager
def s3_errors(where: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND or status == 404:
            raise NotFoundError(f"{where} was not found") from exc
        if code in _TRANSIENT or status >= 500:
            raise TransientFetchError(f"S3 error {code or status} reading {where}") from exc
        raise FetchError(f"S3 refused {where}: {code or status}") from exc
    except NoCredentialsError as exc:
        raise FetchError(f"no S3 credentials are configured to read {where}") from exc
    except (BotoCoreError, RetriesExceededError, S3DownloadFailedError) as exc:  # unreachable, closed, timeout, changed
        raise TransientFetchError(f"S3 unavailable reading {where}: {exc}") from exc


class _Known(BaseSubscriber):  # type: ignore[misc]
    """Give the transfer manager the size and ETag already read: no second HEAD, every part pinned to it."""

    def __init__(self, size: int, etag: str | None) -> None:
        self.size, self.etag = size, etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.size)
        if self.etag:
            future.meta.provide_object_etag(self.etag)


class _Accounted(BaseSubscriber):  # type: ignore[misc]
    """Every arriving chunk, from any of the transfer's threads, through the fetch's budget (one at a time)."""

    def __init__(self, name: str, budget: Budget) -> None:
        self.name, self.budget, self.written = name, budget, 0
        self._lock = threading.Lock()

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        with self._lock:
            self.written += bytes_transferred
            self.budget.consume(self.name, self.written, bytes_transferred)  # raises: the transfer stops


class S3Source:
    """Objects under ``s3://bucket/prefix`` named relative to the prefix."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix  # "" or ends with "/"
        self.etags: dict[str, str] = {}  # name -> ETag, from the listing or HEAD (the cache key's identity)
        self.sizes: dict[str, int] = {}  # name -> size, from the same answer

    def _where(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def list_prefix(self, max_entries: int) -> list[tuple[str, int | None]]:
        entries: list[tuple[str, int | None]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        with s3_errors(self._where()):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix) :]
                    if not name or name.endswith("/"):
                        continue  # the prefix itself or a folder marker
                    entries.append((name, int(obj["Size"])))
                    self.etags[name], self.sizes[name] = str(obj.get("ETag", "")), int(obj["Size"])
                    if len(entries) > max_entries:
                        raise TooLarge(f"more than {max_entries} objects under {self._where()}")
        if not entries:
            raise NotFoundError(f"no objects under {self._where()}")
        return entries

    def head(self, name: str) -> int:
        self.sizes[name], self.etags[name] = self._head(name)
        return self.sizes[name]

    def _head(self, name: str) -> tuple[int, str]:
        with s3_errors(self._where(name)):
            resp = self.client.head_object(Bucket=self.bucket, Key=self.prefix + name)
        return int(resp["ContentLength"]), str(resp.get("ETag", ""))

    def read_prefix(self, name: str, nbytes: int) -> tuple[bytes, int | None]:
        key = self.prefix + name
        try:
            with s3_errors(self._where(name)):
                resp = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{nbytes - 1}")
                body = resp["Body"]
                data: bytes = body.read(nbytes)
                body.close()
        except FetchError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") == "InvalidRange":
                return b"", 0  # an empty object
            raise
        total = str(resp.get("ContentRange", "")).rsplit("/", 1)[-1]
        return data, int(total) if total.isdigit() else None

    def download(self, name: str, out: BinaryIO, budget: Budget) -> int:
        """All of ``name`` into ``out`` (a seekable file: parts land at their offsets), in parallel ranged
        parts from ``budget.limits.s3_part_bytes`` on. The size is checked against the caps before the first
        byte, each arriving chunk is accounted, and every GET is pinned (``IfMatch``) to the ETag listed, so
        an object replaced since its listing fails (transient: the retry lists it again) instead of mixing."""
        if self.etags.get(name) and name in self.sizes:
            size, etag = self.sizes[name], self.etags[name]
        else:
            size, etag = self._head(name)
        budget.check_declared(name, size or None)
        pin = {"IfMatch": etag} if etag else {}
        if size < budget.limits.s3_part_bytes:
            with s3_errors(self._where(name)):
                body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name, **pin)["Body"]
                try:
                    written = copy_stream(body, out, name, budget)
                finally:
                    body.close()
        else:
            written = self._ranged(name, out, budget, size, etag)
        if written != size:
            raise TransientFetchError(f"{self._where(name)} ended after {written} of {size} bytes")
        return size

    def _ranged(self, name: str, out: BinaryIO, budget: Budget, size: int, etag: str) -> int:
        """Parallel ranged GETs through boto3's transfer manager, each pinned to ``etag``."""
        limits = budget.limits
        config = TransferConfig(
            multipart_threshold=limits.s3_part_bytes,
            multipart_chunksize=limits.s3_part_bytes,
            max_concurrency=limits.s3_max_concurrency,
            io_chunksize=min(limits.chunk_bytes, 256 * 1024),
        )
        accounted = _Accounted(name, budget)
        with s3_errors(self._where(name)), create_transfer_manager(self.client, config) as manager:
            future = manager.download(self.bucket, self.prefix + name, out, subscribers=[_Known(size, etag), accounted])
            future.result()
        return accounted.written
