"""Both artifact stores behind one interface: S3 (moto server) and a local directory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from svc_helpers import ARTIFACT_BUCKET

from presso.app.storage import ObjectMissing
from presso.app.storage.local import LocalStore
from presso.app.storage.s3 import S3Store


@pytest.fixture(params=["s3", "local"])
def store(request: Any, s3_endpoint: str, tmp_path: Path) -> Any:
    if request.param == "s3":
        return S3Store(ARTIFACT_BUCKET, "store-test", endpoint_url=s3_endpoint)
    return LocalStore(tmp_path / "store")


def test_roundtrip(store: Any, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    src.write_bytes(b"x" * 1000)
    store.put_file("a/b/blob.bin", src, sha256=hashlib.sha256(src.read_bytes()).hexdigest())
    store.put_bytes("a/manifest.json", b"{}")
    assert store.exists("a/b/blob.bin") and not store.exists("a/nothing")
    assert store.get_bytes("a/b/blob.bin") == b"x" * 1000
    dest = tmp_path / "copy.bin"
    store.download_file("a/b/blob.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(ObjectMissing):
        store.get_bytes("a/missing")
    store.ping()


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", ""])
def test_bad_keys_refused(store: Any, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_presigned_url_downloads(s3_endpoint: str) -> None:
    store = S3Store(ARTIFACT_BUCKET, "presign", endpoint_url=s3_endpoint)
    store.put_bytes("f.txt", b"hello")
    url = store.presigned_url("f.txt", 60)
    assert url and "Expires=" in url or "X-Amz-Expires=60" in (url or "")
    assert httpx.get(url).content == b"hello"


def test_multipart_upload(s3_endpoint: str, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    import presso.app.storage.s3 as s3mod

    store = S3Store(ARTIFACT_BUCKET, "multipart", endpoint_url=s3_endpoint)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (40 * 1024))  # 10 MiB
    old = s3mod.MULTIPART
    s3mod.MULTIPART = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    try:
        store.put_file("big.bin", big)
    finally:
        s3mod.MULTIPART = old
    head = store.client.head_object(Bucket=ARTIFACT_BUCKET, Key="multipart/big.bin")
    assert "-" in head["ETag"]  # multipart ETag
    assert store.get_bytes("big.bin") == big.read_bytes()


def test_presigned_urls_use_the_public_endpoint(s3_endpoint: str) -> None:
    """Inside compose the store is http://minio:9000; users download from the public name: the URL is signed for
    it (here the same moto server under another host name) and downloads."""
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    store = S3Store(ARTIFACT_BUCKET, "public-test", endpoint_url=s3_endpoint, public_endpoint_url=public)
    store.put_bytes("a/b.bin", b"payload")
    url = store.presigned_url("a/b.bin", 60)
    assert url is not None and url.startswith(public + "/")
    assert httpx.get(url).content == b"payload"
