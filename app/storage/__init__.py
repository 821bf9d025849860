"""Artifact stores: one interface, an S3-compatible and a local-directory implementation."""

from __future__ import annotations

from presso.app.core.settings import Settings
from presso.app.storage.base import ArtifactStore, ObjectMissing, validate_key


def make_store(settings: Settings) -> ArtifactStore:
    url = settings.resolved_store_url
    if url.startswith("s3://"):
        from presso.app.storage.s3 import S3Store

        bucket, _, prefix = url[len("s3://") :].partition("/")
        return S3Store(bucket, prefix, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                       public_endpoint_url=settings.s3_public_endpoint_url)
    from presso.app.storage.local import LocalStore

    return LocalStore(url.removeprefix("file://"))


__all__ = ["ArtifactStore", "ObjectMissing", "make_store", "validate_key"]
