"""encode_file/decode_file, pack_dir/unpack_dir, is_packed, the artifact's lossless encoding."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from presso.codec import pzst as codec
from presso.compression.errors import CodecError

from .conftest import SafetensorsFn


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def model_dir(tmp_path: Path, safetensors_bytes: SafetensorsFn, weights: dict[str, tuple[str, bytes]]) -> Path:
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "model-00001-of-00002.safetensors").write_bytes(safetensors_bytes(weights))
    (d / "sub" / "model-00002-of-00002.safetensors").write_bytes(safetensors_bytes({"x": ("F16", b"\1\2" * 999)}))
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "tokenizer.json").write_text("{}")
    return d


def test_file_roundtrip(tmp_path: Path, model_dir: Path) -> None:
    src = model_dir / "model-00001-of-00002.safetensors"
    stats = codec.encode_file(src, tmp_path / "x.pzst", chunk_bytes=1 << 14)
    assert codec.is_packed(tmp_path / "x.pzst") and not codec.is_packed(src)
    assert stats.sha256 == sha(src) and 0 < stats.ratio < 1
    dstats = codec.decode_file(tmp_path / "x.pzst", tmp_path / "y.safetensors")
    assert sha(tmp_path / "y.safetensors") == sha(src) == dstats.sha256


def test_decode_file_leaves_nothing_on_corruption(tmp_path: Path, model_dir: Path) -> None:
    codec.encode_file(model_dir / "model-00001-of-00002.safetensors", tmp_path / "x.pzst")
    raw = bytearray((tmp_path / "x.pzst").read_bytes())
    raw[len(raw) // 2] ^= 0x10
    (tmp_path / "x.pzst").write_bytes(bytes(raw))
    with pytest.raises(CodecError):
        codec.decode_file(tmp_path / "x.pzst", tmp_path / "y.safetensors")
    assert not any(p.name.startswith(".y.") or p.name == "y.safetensors" for p in tmp_path.iterdir())


def test_pack_unpack_dir(tmp_path: Path, model_dir: Path) -> None:
    before = {p.relative_to(model_dir).as_posix(): sha(p) for p in model_dir.rglob("*") if p.is_file()}
    written = codec.pack_dir(model_dir, tmp_path / "packed")
    names = {p.relative_to(tmp_path / "packed").as_posix() for p in written}
    assert "model-00001-of-00002.safetensors.pzst" in names and "sub/model-00002-of-00002.safetensors.pzst" in names
    assert "config.json" in names and "pack.json" in names
    assert codec.is_packed(tmp_path / "packed")
    restored = codec.unpack_dir(tmp_path / "packed", tmp_path / "out")
    assert {p.relative_to(tmp_path / "out").as_posix(): sha(p) for p in restored} == before


def test_lossless_encoding_in_place(tmp_path: Path, model_dir: Path) -> None:
    from presso.compression.io.artifact import encode

    before = {p.relative_to(model_dir).as_posix(): sha(p) for p in model_dir.rglob("*") if p.is_file()}
    report = encode(model_dir, "lossless")
    assert report["files"] == 2 and report["bytes_after"] < report["bytes_before"]
    assert not list(model_dir.rglob("*.safetensors"))
    assert encode(model_dir, "lossless") == {"skipped": "already packed"}
    codec.unpack_dir(model_dir, tmp_path / "out")
    after = {p.relative_to(tmp_path / "out").as_posix(): sha(p) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before


def test_unpack_keeps_files_written_after_packing(tmp_path: Path, model_dir: Path) -> None:
    """An artifact's presso.json and report.json are written after its safetensors are packed: restoring the
    directory keeps them (and drops pack.json and the streams)."""
    codec.pack_dir(model_dir, model_dir)
    (model_dir / "presso.json").write_text('{"files": []}')
    (model_dir / "report.json").write_text('{"layers": []}')
    restored = codec.unpack_dir(model_dir, tmp_path / "out")
    names = {p.relative_to(tmp_path / "out").as_posix() for p in restored}
    assert {"presso.json", "report.json", "config.json", "sub/model-00002-of-00002.safetensors"} <= names
    assert (tmp_path / "out" / "presso.json").read_text() == '{"files": []}'
    assert not list((tmp_path / "out").rglob("*.pzst")) and not (tmp_path / "out" / "pack.json").exists()


def test_unpack_rejects_bad_names_and_hashes(tmp_path: Path, model_dir: Path) -> None:
    packed = tmp_path / "packed"
    codec.pack_dir(model_dir, packed)
    index = json.loads((packed / "pack.json").read_text())
    index["files"][0]["name"] = "../evil"
    (packed / "pack.json").write_text(json.dumps(index))
    with pytest.raises(CodecError, match="bad file name"):
        codec.unpack_dir(packed, tmp_path / "out")
    index["files"][0]["name"] = "config.json"
    index["files"][0]["sha256"] = "0" * 64
    index["files"][0].pop("packed", None)
    (packed / "pack.json").write_text(json.dumps(index))
    with pytest.raises(CodecError, match="sha256"):
        codec.unpack_dir(packed, tmp_path / "out2")


def test_real_torch_safetensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    ts = {
        f"w.{dt}": (torch.randn(33, 17, generator=g) * 0.02).to(dt)
        for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
    }
    ts["i8"] = torch.randint(-128, 127, (101,), generator=g, dtype=torch.int8)
    ts["i32"] = torch.randint(0, 1 << 30, (55,), generator=g, dtype=torch.int32)
    ts["empty"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    save_file(ts, tmp_path / "m.safetensors")
    codec.encode_file(tmp_path / "m.safetensors", tmp_path / "m.pzst")
    codec.decode_file(tmp_path / "m.pzst", tmp_path / "r.safetensors")
    assert sha(tmp_path / "r.safetensors") == sha(tmp_path / "m.safetensors")
    back = load_file(tmp_path / "r.safetensors")
    assert all(torch.equal(back[k].view(torch.uint8), v.view(torch.uint8)) for k, v in ts.items() if v.numel())
    assert np.isfinite(ts["w.torch.float32"].numpy()).all()
