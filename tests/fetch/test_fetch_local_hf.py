"""file:// under allowed roots, and hf:// against a fabricated local Hugging Face cache (offline)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from presso.fetch.api import (
    FetchLimits,
    InvalidURI,
    NotFoundError,
    UnsafeModelFile,
    URINotAllowed,
    fetch_file,
    fetch_model,
    fetch_model_report,
)


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_local_directory(h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    model = write_files(allowed / "tiny", {**h.model_files(), "model.pt": b"\x80pickle"})
    (model / "nested").mkdir()
    (allowed / "shared-vocab.json").write_bytes(b"{}")
    (model / "vocab.json").symlink_to(allowed / "shared-vocab.json")  # a link inside the roots is fine
    result = fetch_model_report(f"file://{model}", tmp_path / "job", limits)
    assert sorted(p.name for p in result.path.iterdir()) == sorted([*h.model_files(), "vocab.json"])
    assert not any(p.is_symlink() for p in result.path.iterdir())
    assert "model.pt" in result.skipped and "auto_map" not in (result.path / "config.json").read_text()
    # the source is untouched: configs are sanitized in the copy only
    assert "auto_map" in (model / "config.json").read_text()


def test_local_outside_roots_and_escaping_links(h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    outside = write_files(tmp_path / "outside", h.model_files())
    with pytest.raises(URINotAllowed) as info:
        fetch_model(f"file://{outside}", tmp_path / "a", limits)
    assert info.value.code == "uri_not_allowed"
    with pytest.raises(URINotAllowed):
        fetch_model(f"file://{tmp_path}/allowed/../outside", tmp_path / "b", limits)
    model = write_files(tmp_path / "allowed" / "m", h.model_files())
    (model / "tokenizer.model").symlink_to(outside / "tokenizer.json")
    with pytest.raises(URINotAllowed):
        fetch_model(f"file://{model}", tmp_path / "c", limits)
    assert not any((tmp_path / "c").iterdir())


def test_local_single_files(h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    allowed = write_files(tmp_path / "allowed", {"m.pth": b"\x80", "w.safetensors": h.make_safetensors({})})
    with pytest.raises(UnsafeModelFile):
        fetch_model(f"file://{allowed}/m.pth", tmp_path / "a", limits)
    assert fetch_model(f"file://{allowed}/w.safetensors", tmp_path / "b", limits).name == "w.safetensors"
    with pytest.raises(NotFoundError):
        fetch_model(f"file://{allowed}/none.safetensors", tmp_path / "c", limits)
    os.mkfifo(allowed / "fifo.safetensors")
    with pytest.raises(UnsafeModelFile):
        fetch_model(f"file://{allowed}/fifo.safetensors", tmp_path / "d", limits)


def test_local_data_file(limits: FetchLimits, tmp_path: Path) -> None:
    allowed = write_files(tmp_path / "allowed", {"eval.txt": b"text " * 100})
    assert fetch_file(f"file://{allowed}/eval.txt", tmp_path / "data", limits).read_bytes() == b"text " * 100
    with pytest.raises(InvalidURI):
        fetch_file(f"file://{allowed}", tmp_path / "data2", limits)
    with pytest.raises(InvalidURI):
        fetch_file("hf://org/name", tmp_path / "data3", limits)


def test_dest_must_be_empty(h: Any, limits: FetchLimits, tmp_path: Path) -> None:
    allowed = write_files(tmp_path / "allowed", {"w.safetensors": h.make_safetensors({})})
    write_files(tmp_path / "job", {"other": b""})
    with pytest.raises(ValueError):
        fetch_model(f"file://{allowed}/w.safetensors", tmp_path / "job", limits)


def fake_hf_cache(cache: Path, repo: str, files: dict[str, bytes], *, revision: str = "main") -> Path:
    """The huggingface_hub cache layout: refs/<rev> -> commit, snapshots/<commit>/<file> -> ../../blobs/<hash>."""
    base = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (base / "refs").mkdir(parents=True)
    (base / "refs" / revision).write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (base / "blobs").mkdir()
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (base / "blobs" / digest).write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / digest)
    return snapshot


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hf_from_local_cache(h: Any, limits: FetchLimits, tmp_path: Path, offline: None) -> None:
    from dataclasses import replace

    cache = tmp_path / "hf-cache"
    fake_hf_cache(cache, "org/tiny", {**h.model_files(), "pytorch_model.bin": b"\x80evil", "modeling.py": b"x"})
    result = fetch_model_report("hf://org/tiny@main", tmp_path / "job", replace(limits, hf_cache_dir=cache))
    names = sorted(p.name for p in result.path.iterdir())
    assert names == sorted(h.model_files())
    assert not any(p.is_symlink() for p in result.path.iterdir())
    assert "auto_map" not in json.loads((result.path / "config.json").read_text())
    with pytest.raises(NotFoundError):
        fetch_model("hf://org/missing@main", tmp_path / "job2", replace(limits, hf_cache_dir=cache))


def test_hf_cache_link_escaping_the_repo_refused(h: Any, limits: FetchLimits, tmp_path: Path, offline: None) -> None:
    from dataclasses import replace

    cache = tmp_path / "hf-cache"
    snapshot = fake_hf_cache(cache, "org/evil", h.model_files())
    secret = write_files(tmp_path / "secret", {"tokenizer.model": b"secret"})
    (snapshot / "tokenizer.model").symlink_to(secret / "tokenizer.model")
    with pytest.raises(URINotAllowed):
        fetch_model("hf://org/evil", tmp_path / "job", replace(limits, hf_cache_dir=cache))


class _Sibling:
    def __init__(self, rfilename: str, size: int) -> None:
        self.rfilename, self.size = rfilename, size


def _fake_hub(monkeypatch: pytest.MonkeyPatch, siblings: list[tuple[str, int]], params: int) -> list[str]:
    """Stand-in for the Hub API (no hub access here): records calls, never downloads."""
    import types

    import huggingface_hub

    calls: list[str] = []

    class FakeApi:
        def model_info(self, repo_id: str, **kwargs: Any) -> Any:
            calls.append("model_info")
            return types.SimpleNamespace(siblings=[_Sibling(n, s) for n, s in siblings])

        def get_safetensors_metadata(self, repo_id: str, **kwargs: Any) -> Any:
            calls.append("metadata")
            return types.SimpleNamespace(parameter_count={"F32": params})

    def no_download(*args: Any, **kwargs: Any) -> str:
        calls.append("snapshot_download")
        raise AssertionError("must not download")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    return calls


def test_hf_online_prechecks_before_download(
    limits: FetchLimits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presso.fetch.api import ModelTooLargeError, TooLarge

    calls = _fake_hub(monkeypatch, [("config.json", 10), ("model.safetensors", 100)], params=10**13)
    with pytest.raises(ModelTooLargeError):
        fetch_model("hf://org/huge", tmp_path / "a", limits)
    assert "snapshot_download" not in calls
    _fake_hub(monkeypatch, [("config.json", 10), ("pytorch_model.bin", 100)], params=1)
    with pytest.raises(UnsafeModelFile):
        fetch_model("hf://org/pickled", tmp_path / "b", limits)
    _fake_hub(monkeypatch, [("model.safetensors", 10**12)], params=1)
    with pytest.raises(TooLarge):
        fetch_model("hf://org/big", tmp_path / "c", limits)


def test_text_file_named_bin_is_described_not_called_a_pickle(limits: FetchLimits, tmp_path: Path) -> None:
    """It used to fail as `unsafe_model: refused pickle checkpoint`, whatever the file held."""
    from presso.fetch.api import ModelFileCorrupt

    allowed = tmp_path / "allowed"
    text = write_files(allowed / "text", {"config.json": b"{}", "model.bin": b"hello, I am a README\n"})
    with pytest.raises(ModelFileCorrupt) as info:
        fetch_model(f"file://{text}", tmp_path / "a", limits)
    assert info.value.code == "model_load_error"
    assert info.value.message.startswith("model.bin is not a PyTorch checkpoint (it looks like text: 'hello, I am")
    with pytest.raises(ModelFileCorrupt):  # named on its own, too
        fetch_model(f"file://{text}/model.bin", tmp_path / "b", limits)
    real = write_files(allowed / "real", {"config.json": b"{}", "pytorch_model.bin": b"PK\x03\x04" + b"\0" * 60})
    with pytest.raises(UnsafeModelFile) as refused:
        fetch_model(f"file://{real}", tmp_path / "c", limits)
    assert "pytorch_model.bin" in refused.value.message and "zip archive holding a pickle" in refused.value.message
