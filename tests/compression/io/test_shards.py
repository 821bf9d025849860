"""ShardWriter writes what safetensors' save_file writes, tensor by tensor; ShardReader reads one tensor."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from presso.compression.io.shards import ShardReader, ShardWriter, save_one_at_a_time

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.int8, torch.uint8,
          torch.bool, torch.float8_e4m3fn, torch.float64, torch.int16]


def _tensors():
    g = torch.Generator().manual_seed(0)
    out = {}
    for i, dtype in enumerate(DTYPES * 2):
        t = torch.randn(3 + i, 5, generator=g) * 10
        out[f"layer.{(7 * i) % 11}.t{i}"] = t.to(dtype)
    out["column"] = torch.arange(9, dtype=torch.int32).reshape(9, 1)[:, :1]  # contiguous, odd stride
    out["empty"] = torch.zeros(0, 4)
    return out


def test_one_shard_is_byte_identical_to_save_file(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "w"
    out.mkdir()
    writer = ShardWriter(out, shard_bytes=1 << 30)
    for name, t in tensors.items():
        writer.add(name, t)
    assert writer.finish() == [out / "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_shards_split_like_the_writer_and_read_back(tmp_path):
    tensors = _tensors()
    writer = ShardWriter(tmp_path, shard_bytes=200)
    for name, t in tensors.items():
        writer.add(name, t)
    files = writer.finish()
    assert files[-1].name == "model.safetensors.index.json" and len(files) > 3
    reader = ShardReader(tmp_path)
    assert set(reader.names()) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(reader.get(name), t)
    for f in files[:-1]:  # each shard is what save_file writes for its tensors
        mine = load_file(str(f))
        save_file(mine, str(tmp_path / "ref"), metadata={"format": "pt"})
        assert f.read_bytes() == (tmp_path / "ref").read_bytes()


def test_save_one_at_a_time_writes_save_files_bytes(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    save_one_at_a_time(list(tensors.items()), tmp_path / "one.safetensors")
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    back = load_file(str(tmp_path / "one.safetensors"))
    assert all(torch.equal(back[n].view(torch.uint8), t.contiguous().view(torch.uint8)) for n, t in tensors.items())
