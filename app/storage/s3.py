"""S3-compatible artifact store through boto3 (AWS, MinIO, moto)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from presso.app.storage.base import ObjectMissing, validate_key

MULTIPART = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=8)


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _client(endpoint_url: str | None, region: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"},
                      signature_version="s3v4"),
    )


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str = "us-east-1", client: Any | None = None, public_endpoint_url: str | None = None) -> None:
        """``public_endpoint_url``: where clients outside the service's network reach the same S3 (presigned URLs
        are signed for that host; e.g. MinIO at http://minio:9000 inside compose, https://s3.example.com out)."""
        if not bucket:
            raise ValueError("s3 store URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or _client(endpoint_url, region)
        self.signer = _client(public_endpoint_url, region) if public_endpoint_url else self.client

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> None:
        extra = {"Metadata": {"sha256": sha256}} if sha256 else None
        self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs=extra, Config=MULTIPART)

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _missing(exc):
                raise ObjectMissing(key) from exc
            raise
        data: bytes = obj["Body"].read()
        return data

    def download_file(self, key: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=MULTIPART)
        except ClientError as exc:
            if _missing(exc):
                raise ObjectMissing(key) from exc
            raise

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if _missing(exc):
                return False
            raise

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        url: str = self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s
        )
        return url

    def local_path(self, key: str) -> Path | None:
        return None

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)
