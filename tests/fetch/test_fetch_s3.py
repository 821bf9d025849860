"""s3:// against a real moto S3 server (HTTP, boto3 with endpoint_url)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from presso.fetch.api import (
    FetchLimits,
    InvalidURI,
    ModelTooLargeError,
    NotFoundError,
    TooLarge,
    UnsafeModelFile,
    fetch_file,
    fetch_model,
    fetch_model_report,
)
from presso.fetch.s3 import S3Source


@pytest.fixture
def s3_limits(limits: FetchLimits, fetch_s3_endpoint: str) -> FetchLimits:
    return replace(limits, s3_endpoint_url=fetch_s3_endpoint, s3_region="us-east-1")


def put_model(s3: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=data)


def test_prefix_fetch_keeps_only_safe_files(
    s3: Any, bucket: str, h: Any, s3_limits: FetchLimits, tmp_path: Path
) -> None:
    files = h.model_files()
    extra = {
        "pytorch_model.bin": b"\x80\x04pickle",
        "modeling_evil.py": b"import os",
        "README.md": b"# hi",
        "sub/model.safetensors": files["model.safetensors"],
    }
    put_model(s3, bucket, "models/tiny/", {**files, **extra})
    put_model(s3, bucket, "models/tiny-other/", {"model.safetensors": files["model.safetensors"]})
    result = fetch_model_report(f"s3://{bucket}/models/tiny", tmp_path / "job", s3_limits)
    assert sorted(p.name for p in result.path.iterdir()) == sorted(files)
    assert set(result.skipped) == set(extra)
    assert "auto_map" not in json.loads((result.path / "config.json").read_text())
    assert (result.path / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_single_object_and_data_file(s3: Any, bucket: str, h: Any, s3_limits: FetchLimits, tmp_path: Path) -> None:
    data = h.make_safetensors({"w": ("F32", [3, 3])})
    put_model(s3, bucket, "m/", {"model.safetensors": data, "calib.txt": b"some text\n"})
    path = fetch_model(f"s3://{bucket}/m/model.safetensors", tmp_path / "job", s3_limits)
    assert path.name == "model.safetensors" and path.read_bytes() == data
    text = fetch_file(f"s3://{bucket}/m/calib.txt", tmp_path / "data", s3_limits)
    assert text.read_bytes() == b"some text\n"
    with pytest.raises(InvalidURI):
        fetch_file(f"s3://{bucket}/m/", tmp_path / "data2", s3_limits)


@pytest.mark.parametrize("suffix", ["missing/model.safetensors", "missing-prefix/"])
def test_missing_object_is_not_found(bucket: str, s3_limits: FetchLimits, tmp_path: Path, suffix: str) -> None:
    with pytest.raises(NotFoundError) as info:
        fetch_model(f"s3://{bucket}/{suffix}", tmp_path / "job", s3_limits)
    assert info.value.code == "not_found"


def test_missing_bucket_and_data_object(s3_limits: FetchLimits, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        fetch_model("s3://no-such-bucket-here/m/", tmp_path / "a", s3_limits)
    with pytest.raises(NotFoundError):
        fetch_file("s3://no-such-bucket-here/calib.txt", tmp_path / "b", s3_limits)


def test_pickle_only_prefix_refused(s3: Any, bucket: str, s3_limits: FetchLimits, tmp_path: Path) -> None:
    put_model(s3, bucket, "p/", {"config.json": b"{}", "pytorch_model.bin": b"\x80\x04evil"})
    with pytest.raises(UnsafeModelFile) as info:
        fetch_model(f"s3://{bucket}/p/", tmp_path / "job", s3_limits)
    assert "safetensors" in info.value.message and "pickle stream (protocol 4)" in info.value.message
    with pytest.raises(UnsafeModelFile) as single:
        fetch_model(f"s3://{bucket}/p/pytorch_model.bin", tmp_path / "job", s3_limits)
    assert "pickle stream (protocol 4)" in single.value.message


def test_text_named_bin_on_s3_says_what_it_is(s3: Any, bucket: str, s3_limits: FetchLimits, tmp_path: Path) -> None:
    from presso.fetch.api import ModelFileCorrupt

    put_model(s3, bucket, "t/", {"config.json": b"{}", "model.bin": b"<html>Access denied</html>"})
    for uri in (f"s3://{bucket}/t/", f"s3://{bucket}/t/model.bin"):
        with pytest.raises(ModelFileCorrupt) as info:
            fetch_model(uri, tmp_path / "job", s3_limits)
        assert "model.bin is not a PyTorch checkpoint (it looks like text: '<html>Access denied" in info.value.message


@pytest.mark.parametrize("key", ["t/../escape.json", "t/a/../../escape.json", "t/..\\..\\escape.json"])
def test_traversal_key_refused(s3: Any, bucket: str, h: Any, s3_limits: FetchLimits, tmp_path: Path, key: str) -> None:
    put_model(s3, bucket, "t/", {"model.safetensors": h.make_safetensors({"w": ("F32", [2])})})
    s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    with pytest.raises(UnsafeModelFile):
        fetch_model(f"s3://{bucket}/t/", tmp_path / "job", s3_limits)
    assert not any((tmp_path / "job").iterdir())
    assert not (tmp_path / "escape.json").exists()


def test_declared_params_refused_before_download(
    s3: Any, bucket: str, h: Any, s3_limits: FetchLimits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_model(s3, bucket, "huge/", {"config.json": b"{}", "model.safetensors": h.huge_header(10**13)})

    def no_download(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("downloaded a model whose header is over the parameter cap")

    monkeypatch.setattr(S3Source, "download", no_download)
    with pytest.raises(ModelTooLargeError) as info:
        fetch_model(f"s3://{bucket}/huge/", tmp_path / "job", s3_limits)
    assert info.value.code == "model_too_large" and "10,000,000,000,000" in info.value.message


def test_truncated_object(s3: Any, bucket: str, h: Any, s3_limits: FetchLimits, tmp_path: Path) -> None:
    put_model(s3, bucket, "tr/", {"model.safetensors": h.make_safetensors({"w": ("F32", [32, 32])})[:-10]})
    with pytest.raises(Exception) as info:
        fetch_model(f"s3://{bucket}/tr/", tmp_path / "job", s3_limits)
    assert getattr(info.value, "code", None) == "model_load_error"


def test_file_count_and_size_caps(s3: Any, bucket: str, h: Any, s3_limits: FetchLimits, tmp_path: Path) -> None:
    shards = {f"model-{i}.safetensors": h.make_safetensors({"w": ("F32", [2])}) for i in range(3)}
    put_model(s3, bucket, "many/", shards)
    with pytest.raises(TooLarge):
        fetch_model(f"s3://{bucket}/many/", tmp_path / "a", replace(s3_limits, max_files=2))
    put_model(s3, bucket, "big/", {"model.safetensors": h.make_safetensors({"w": ("U8", [2 << 20])})})
    with pytest.raises(TooLarge) as info:
        fetch_model(f"s3://{bucket}/big/", tmp_path / "b", replace(s3_limits, max_params=None))
    assert info.value.code == "too_large"
