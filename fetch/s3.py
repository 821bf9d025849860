"""s3:// source through boto3 (default credential chain; endpoint from the limits for MinIO/moto)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

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
    "503",
    "500",
}


def make_client(limits: FetchLimits) -> Any:
    config = Config(
        connect_timeout=min(limits.timeout_s, 10.0),
        read_timeout=min(limits.timeout_s, 60.0),
        retries={"max_attempts": 3, "mode": "standard"},
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
    except BotoCoreError as exc:  # endpoint unreachable, connection closed, read timeout
        raise TransientFetchError(f"S3 unavailable reading {where}: {exc}") from exc


class S3Source:
    """Objects under ``s3://bucket/prefix`` named relative to the prefix."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix  # "" or ends with "/"

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
                    if len(entries) > max_entries:
                        raise TooLarge(f"more than {max_entries} objects under {self._where()}")
        if not entries:
            raise NotFoundError(f"no objects under {self._where()}")
        return entries

    def head(self, name: str) -> int:
        with s3_errors(self._where(name)):
            return int(self.client.head_object(Bucket=self.bucket, Key=self.prefix + name)["ContentLength"])

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
        with s3_errors(self._where(name)):
            resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
            body = resp["Body"]
            try:
                budget.check_declared(name, int(resp.get("ContentLength", 0)) or None)
                return copy_stream(body, out, name, budget)
            finally:
                body.close()
