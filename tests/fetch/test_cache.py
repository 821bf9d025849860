"""The worker's model cache (presso.fetch.cache / cached) on a real moto S3 server and a real HTTP server, and
the S3 source's parallel ranged transfers. GetObject calls are counted by a boto3 event hook."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from presso.fetch.api import (
    FetchLimits,
    ModelTooLargeError,
    TooLarge,
    TransientFetchError,
    fetch_model,
    fetch_model_report,
)
from presso.fetch.cache import ModelCache, _flock
from presso.fetch.limits import Budget
from presso.fetch.s3 import S3Source, make_client

EVENT = "before-parameter-build.s3.GetObject"


@pytest.fixture
def s3l(limits: FetchLimits, fetch_s3_endpoint: str) -> FetchLimits:
    return replace(limits, s3_endpoint_url=fetch_s3_endpoint, s3_region="us-east-1")


@pytest.fixture
def gets() -> Iterator[list[dict[str, Any]]]:
    """The parameters of every GetObject call any new client of boto3's default session makes."""
    calls: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **kwargs: Any) -> None:
        calls.append(dict(params))

    session = boto3._get_default_session()
    session.events.register(EVENT, hook)
    yield calls
    session.events.unregister(EVENT, hook)


@pytest.fixture
def cache(tmp_path: Path) -> ModelCache:
    return ModelCache(tmp_path / "cache", 1 << 20)


def put(s3: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> str:
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=data)
    return f"s3://{bucket}/{prefix}"


def entries(cache: ModelCache) -> list[Path]:
    return sorted((cache.root / "entries").iterdir())


def key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_second_fetch_downloads_nothing(s3: Any, bucket: str, h: Any, s3l: FetchLimits, cache: ModelCache,
                                        tmp_path: Path, gets: list[dict[str, Any]]) -> None:
    files = h.model_files()
    uri = put(s3, bucket, "m/", {**files, "pytorch_model.bin": b"\x80\x04pickle"})
    first = fetch_model_report(uri, tmp_path / "j1", s3l, cache)
    assert first.cache == "miss" and len([g for g in gets if "Range" not in g]) == len(files)
    gets.clear()
    second = fetch_model_report(uri, tmp_path / "j2", s3l, cache)
    assert second.cache == "hit" and gets == []
    assert (second.files, second.removed_config_keys, second.declared_params, second.skipped) == (
        first.files, first.removed_config_keys, first.declared_params, first.skipped)
    [entry] = entries(cache)
    for name in files:
        a, b, cached = (tmp_path / "j1" / name).stat(), (tmp_path / "j2" / name).stat(), entry / "files" / name
        assert a.st_ino == b.st_ino == cached.stat().st_ino  # hard links to the entry
        assert not cached.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert "auto_map" not in json.loads((tmp_path / "j2" / "config.json").read_text())  # the sanitized copy
    assert (tmp_path / "j2" / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_single_object_and_changed_object(s3: Any, bucket: str, h: Any, s3l: FetchLimits, cache: ModelCache,
                                          tmp_path: Path, gets: list[dict[str, Any]]) -> None:
    old, new = h.make_safetensors({"w": ("F32", [3, 3])}), h.make_safetensors({"w": ("F32", [4, 4])})
    uri = put(s3, bucket, "s/", {"model.safetensors": old}) + "model.safetensors"
    assert fetch_model(uri, tmp_path / "j1", s3l, cache).read_bytes() == old
    gets.clear()
    assert fetch_model_report(uri, tmp_path / "j2", s3l, cache).cache == "hit" and gets == []
    put(s3, bucket, "s/", {"model.safetensors": new})  # a new ETag: another key
    result = fetch_model_report(uri, tmp_path / "j3", s3l, cache)
    assert result.cache == "miss" and result.path.read_bytes() == new and gets
    assert (tmp_path / "j1" / "model.safetensors").read_bytes() == old  # an earlier job's files are its own
    assert len(entries(cache)) == 2


def test_damaged_entry_is_fetched_again(s3: Any, bucket: str, h: Any, s3l: FetchLimits, cache: ModelCache,
                                        tmp_path: Path, gets: list[dict[str, Any]]) -> None:
    files = h.model_files()
    uri = put(s3, bucket, "d/", files)
    fetch_model(uri, tmp_path / "j1", s3l, cache)
    [entry] = entries(cache)
    cached = entry / "files" / "model.safetensors"
    cached.chmod(0o644)
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF  # same size, a flipped byte
    with open(cached, "r+b") as f:
        f.write(bytes(data))
    recorded = {f["name"]: f for f in json.loads((entry / "manifest.json").read_text())["files"]}
    os.utime(cached, ns=(0, recorded["model.safetensors"]["mtime_ns"]))  # mtime restored: the sample sees it
    gets.clear()
    result = fetch_model_report(uri, tmp_path / "j2", s3l, cache)
    assert result.cache == "miss" and gets
    assert (tmp_path / "j2" / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert fetch_model_report(uri, tmp_path / "j3", s3l, cache).cache == "hit"


def test_killed_insert_is_ignored_and_cleaned(s3: Any, bucket: str, h: Any, s3l: FetchLimits, cache: ModelCache,
                                              tmp_path: Path) -> None:
    files = h.model_files()
    uri = put(s3, bucket, "k/", files)
    fetch_model(uri, tmp_path / "j1", s3l, cache)
    [entry] = entries(cache)
    # What a worker killed mid-insert leaves: a staging directory of this key (a half file, no manifest), and one
    # of another key.
    half = cache.root / "staging" / f"{entry.name}.999999.deadbeef"
    os.rename(entry, half)
    (half / "manifest.json").unlink()
    with open(half / "files" / "model.safetensors", "r+b") as f:
        f.truncate(10)
    other = cache.root / "staging" / f"{key(1)}.999999.cafebabe"
    (other / "files").mkdir(parents=True)
    result = fetch_model_report(uri, tmp_path / "j2", s3l, cache)
    assert result.cache == "miss"
    assert (tmp_path / "j2" / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert list((cache.root / "staging").iterdir()) == []  # this key's under its lock, the other's by the sweep
    assert fetch_model_report(uri, tmp_path / "j3", s3l, cache).cache == "hit"


def test_caps_refuse_with_the_same_codes(s3: Any, bucket: str, h: Any, s3l: FetchLimits, cache: ModelCache,
                                         tmp_path: Path) -> None:
    files = h.model_files()
    uri = put(s3, bucket, "c/", files)
    small = replace(s3l, max_total_bytes=200)
    few = replace(s3l, max_params=10)
    for lim, error in ((small, TooLarge), (few, ModelTooLargeError)):
        with pytest.raises(error) as plain:
            fetch_model(uri, tmp_path / f"plain-{error.code}", lim)
        with pytest.raises(error) as missed:  # refused before anything is cached
            fetch_model(uri, tmp_path / f"miss-{error.code}", lim, cache)
        assert plain.value.code == missed.value.code == error.code
        assert entries(cache) == [] and list((cache.root / "staging").iterdir()) == []
    fetch_model(uri, tmp_path / "ok", s3l, cache)  # cached under the larger caps
    for lim, error in ((small, TooLarge), (few, ModelTooLargeError)):
        with pytest.raises(error) as hit:
            fetch_model(uri, tmp_path / f"hit-{error.code}", lim, cache)
        assert hit.value.code == error.code
        assert list((tmp_path / f"hit-{error.code}").iterdir()) == []


def test_lru_eviction_skips_entries_in_use(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", 250)

    def fill(n: int) -> Any:
        return lambda d: (d / "w.bin").write_bytes(b"x" * n) and {"n": n}

    def get(i: int, dest: str, n: int = 100) -> bool:
        (tmp_path / dest).mkdir()
        time.sleep(0.02)  # distinct last-use times
        return cache.fetch(key(i), tmp_path / dest, fill(n))[1]

    assert not get(1, "a") and not get(2, "b") and get(1, "a2")  # 1 is now more recent than 2
    assert not get(3, "c")  # 300 > 250: the least recently used (2) goes
    assert [p.name for p in entries(cache)] == sorted([key(1), key(3)])
    with _flock(cache.root / "locks" / f"{key(1)}.lock"):  # 1 (now the oldest) in use by another job
        assert not get(4, "d")
    assert [p.name for p in entries(cache)] == sorted([key(1), key(4)])
    assert (tmp_path / "b" / "w.bin").read_bytes() == b"x" * 100  # an evicted entry's job keeps its files
    (tmp_path / "e").mkdir()
    assert cache.fetch(key(5), tmp_path / "e", fill(300)) == ({"n": 300}, False)
    assert (tmp_path / "e" / "w.bin").stat().st_size == 300
    assert key(5) not in {p.name for p in entries(cache)}  # over the whole quota: not cached


def test_ranged_parallel_transfer(s3: Any, bucket: str, h: Any, s3l: FetchLimits, tmp_path: Path,
                                  gets: list[dict[str, Any]]) -> None:
    data = h.make_safetensors({"w": ("F32", [300 * 256])})  # ~300 KiB
    uri = put(s3, bucket, "r/", {"model.safetensors": data}) + "model.safetensors"
    part = 64 * 1024
    lim = replace(s3l, s3_part_bytes=part, s3_max_concurrency=4)
    assert fetch_model(uri, tmp_path / "j", lim).read_bytes() == data
    etag = s3.head_object(Bucket=bucket, Key="r/model.safetensors")["ETag"]
    ranged = sorted(int(g["Range"].split("=")[1].split("-")[0]) for g in gets if g.get("IfMatch") == etag)
    assert ranged == list(range(0, len(data), part))  # every part once, each pinned to the listed ETag


def test_budget_stops_a_ranged_transfer(s3: Any, bucket: str, h: Any, s3l: FetchLimits, tmp_path: Path) -> None:
    put(s3, bucket, "b/", {"model.safetensors": b"\0" * (300 * 1024)})
    lim = replace(s3l, s3_part_bytes=64 * 1024, max_file_bytes=100 * 1024)

    class Unannounced(Budget):  # as if the size were not known beforehand: the arriving bytes must stop it
        def check_declared(self, name: str, size: int | None) -> None:
            pass

    with open(tmp_path / "out", "wb") as out, pytest.raises(TooLarge):
        S3Source(make_client(lim), bucket, "b/").download("model.safetensors", out, Unannounced(lim))


def test_http_cached_by_etag(http_server: Any, h: Any, limits: FetchLimits, cache: ModelCache, tmp_path: Path) -> None:
    from http_helpers import send_bytes

    files = h.model_files()
    version = {"etag": '"v1"'}

    def route(data: bytes) -> Any:
        return lambda handler: send_bytes(handler, http_server, data, {"ETag": version["etag"]})

    for name, data in files.items():
        http_server.routes[f"/m/{name}"] = route(data)
    http_server.routes["/m/presso-files.txt"] = "\n".join(files).encode()
    uri = f"{http_server.base}/m/"
    assert fetch_model_report(uri, tmp_path / "j1", limits, cache).cache == "miss"
    before = dict(http_server.sent)
    assert fetch_model_report(uri, tmp_path / "j2", limits, cache).cache == "hit"
    assert all(http_server.sent[f"/m/{n}"] - before[f"/m/{n}"] == 1 for n in files)  # one-byte identity probes
    version["etag"] = '"v2"'
    assert fetch_model_report(uri, tmp_path / "j3", limits, cache).cache == "miss"
    http_server.routes["/w.safetensors"] = files["model.safetensors"]  # no ETag, no Last-Modified
    assert fetch_model_report(f"{http_server.base}/w.safetensors", tmp_path / "j4", limits, cache).cache is None


@pytest.mark.parametrize("size", [1000, 300 * 1024])  # one GET, parallel ranged GETs
def test_object_replaced_after_listing_is_transient(s3: Any, bucket: str, s3l: FetchLimits, tmp_path: Path,
                                                    size: int) -> None:
    put(s3, bucket, "x/", {"model.safetensors": b"\1" * size})
    lim = replace(s3l, s3_part_bytes=64 * 1024)
    source = S3Source(make_client(lim), bucket, "x/")
    assert source.list_prefix(10) == [("model.safetensors", size)]
    put(s3, bucket, "x/", {"model.safetensors": b"\2" * size})  # same size, another ETag
    with open(tmp_path / "out", "wb") as out, pytest.raises(TransientFetchError):
        source.download("model.safetensors", out, Budget(lim))


def _fetch_in_child(uri: str, dest: Path, lim: FetchLimits, root: Path, gets: list[Any], results: Any) -> None:
    result = fetch_model_report(uri, dest, lim, ModelCache(root, 1 << 20))
    results.put((result.cache, len([g for g in gets if "Range" not in g])))


def test_worker_processes_share_one_download(s3: Any, bucket: str, h: Any, s3l: FetchLimits, cache: ModelCache,
                                             tmp_path: Path, gets: list[dict[str, Any]]) -> None:
    import multiprocessing

    files = h.model_files()
    uri = put(s3, bucket, "p/", files)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child, args=(uri, tmp_path / f"j{i}", s3l, cache.root, gets, results))
             for i in range(3)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    assert outcomes == [("hit", 0), ("hit", 0), ("miss", len(files))]  # one download, under the key's lock
    inodes = {(tmp_path / f"j{i}" / n).stat().st_ino for i in range(3) for n in ["model.safetensors"]}
    assert len(inodes) == 1 and len(entries(cache)) == 1
