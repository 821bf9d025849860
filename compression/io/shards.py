"""Safetensors shards read one tensor at a time and written one tensor at a time.

``ShardReader``: tensor name -> shard file (from ``model.safetensors.index.json`` or the files' headers);
``get(name)`` reads that one tensor (a positional read of its bytes, see the class), so a model of any size
is read one block at a time.

``ShardWriter``: ``add(name, tensor)`` appends the tensor's bytes to the current shard's data file and forgets
the tensor; a shard is closed (header + data in safetensors order, copied in chunks from the data file) when
the next tensor would take it past ``shard_bytes``. ``finish()`` names the shards as
``compression.io.artifact`` does (``model.safetensors`` alone, else ``model-0000i-of-0000N.safetensors`` +
``model.safetensors.index.json``). Fed the same tensors in the same order with the same ``shard_bytes``, it
writes the same bytes as ``safetensors.torch.save_file`` on each shard (tests/compression/io/test_shards.py):
the header is serialized as safetensors serializes it (tensors ordered by dtype, as its own ``save`` orders
them, then by name; compact JSON; padded with spaces to 8 bytes).
"""

from __future__ import annotations

import json
import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
INDEX = "model.safetensors.index.json"
_COPY_CHUNK = 64 << 20
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2)


@cache
def _dtype_table() -> dict[torch.dtype, tuple[int, str]]:
    """torch dtype -> (position in safetensors' order, safetensors' name), asked of safetensors itself."""
    from safetensors.torch import save

    blob = save({f"t{i}": torch.zeros(1, dtype=d) for i, d in enumerate(_DTYPES)}, metadata={"format": "pt"})
    header = json.loads(blob[8: 8 + int.from_bytes(blob[:8], "little")])
    header.pop("__metadata__", None)
    return {_DTYPES[int(k[1:])]: (pos, v["dtype"]) for pos, (k, v) in enumerate(header.items())}


def header_bytes(entries: dict[str, tuple[torch.dtype, list[int], int]], metadata: dict[str, str]) -> tuple[bytes,
                                                                                                         list[str]]:
    """The safetensors header (with its 8-byte length) of tensors name -> (dtype, shape, nbytes), and the order
    their data follows it in."""
    table = _dtype_table()
    order = sorted(entries, key=lambda n: (table[entries[n][0]][0], n))
    head: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in order:
        dtype, shape, nbytes = entries[name]
        head[name] = {"dtype": table[dtype][1], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return len(raw).to_bytes(8, "little") + raw, order


def nbytes_of(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def save_one_at_a_time(tensors: list[tuple[str, torch.Tensor]], path: Path,
                       metadata: dict[str, str] | None = None) -> None:
    """A safetensors file of ``tensors`` (any device) written header first, then each tensor's bytes, copied to
    the host one tensor at a time: a list of GPU activations never sits whole in host memory. Readable by
    ``safetensors.torch.load_file``; fsynced."""
    entries = {name: (t.dtype, list(t.shape), nbytes_of(t)) for name, t in tensors}
    if len(entries) != len(tensors):
        raise ValueError("tensor names repeat")
    head, order = header_bytes(entries, metadata or {"format": "pt"})
    by_name = dict(tensors)
    with Path(path).open("wb") as out:
        out.write(head)
        for name in order:
            t = by_name[name]
            if t.numel():
                out.write(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
        out.flush()
        os.fsync(out.fileno())


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (tensor entries) and where its data starts."""
    with Path(path).open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{Path(path).name}: truncated safetensors file")
        n = int.from_bytes(head, "little")
        if n > 100_000_000:
            raise ValueError(f"{Path(path).name}: safetensors header of {n} bytes is not credible")
        header: dict[str, Any] = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


class ShardReader:
    """Tensor name -> its shard; ``get`` reads one tensor's bytes with a positional read into a fresh buffer.

    Not through a memory map (``safetensors.safe_open``): a mapped page that was read stays in the process's
    resident set while the file is open, so reading a 4 GB shard block by block would keep up to 4 GB
    resident; a plain read leaves only the page cache, which the kernel reclaims."""

    def __init__(self, model_dir: Path) -> None:
        self.dir = Path(model_dir)
        self.where: dict[str, Path] = {}
        index = self.dir / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.where = {n: self.dir / f for n, f in weight_map.items()}
        else:
            for f in sorted(self.dir.glob("*.safetensors")):
                self.where.update({n: f for n in read_header(f)[0]})
        self._headers: dict[Path, tuple[dict[str, Any], int]] = {}
        self._dtypes = {name: dtype for dtype, (_, name) in _dtype_table().items()}

    def _entry(self, name: str) -> tuple[Path, dict[str, Any], int]:
        path = self.where[name]
        if path not in self._headers:
            self._headers[path] = read_header(path)
        header, start = self._headers[path]
        return path, header[name], start

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def names(self) -> list[str]:
        return list(self.where)

    def get(self, name: str) -> torch.Tensor:
        path, entry, start = self._entry(name)
        begin, end = entry["data_offsets"]
        dtype = self._dtypes[entry["dtype"]]
        if end == begin:
            return torch.empty(entry["shape"], dtype=dtype)
        buf = bytearray(end - begin)
        with path.open("rb", buffering=0) as fh:
            fh.seek(start + begin)
            view, got = memoryview(buf), 0
            while got < len(buf):
                n = fh.readinto(view[got:])
                if not n:
                    raise ValueError(f"{path.name}: truncated data of {name}")
                got += n
        return torch.frombuffer(buf, dtype=dtype).reshape(entry["shape"])

    def close(self) -> None:
        self._headers.clear()


class ShardWriter:
    """Writes tensors into safetensors shards as they come (see the module docstring)."""

    def __init__(self, out_dir: Path, shard_bytes: int, metadata: dict[str, str] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.shard_bytes = shard_bytes
        self.metadata = metadata or {"format": "pt"}
        self.shards: list[Path] = []  # closed shards (temporary names until finish)
        self.weight_map: dict[str, int] = {}  # tensor -> shard number (0-based)
        self.total = 0
        self._entries: dict[str, tuple[torch.dtype, list[int], int]] = {}
        self._offsets: dict[str, int] = {}
        self._size = 0
        self._data: Any = None

    def _part(self, k: int) -> Path:
        return self.out_dir / f".shard-{k:05d}.part"

    def add(self, name: str, t: torch.Tensor) -> None:
        if name in self.weight_map:
            raise ValueError(f"tensor {name} written twice")
        t = t.detach().to("cpu").contiguous()
        n = nbytes_of(t)
        if self._size + n > self.shard_bytes and self._entries:
            self._close()
        if self._data is None:
            self._data = self._part(len(self.shards)).open("wb")
        self._offsets[name] = self._data.tell()
        if n:
            self._data.write(t.reshape(-1).view(torch.uint8).numpy().data)
        self._entries[name] = (t.dtype, list(t.shape), n)
        self.weight_map[name] = len(self.shards)
        self._size += n
        self.total += n

    def _close(self) -> None:
        k = len(self.shards)
        assert self._data is not None
        self._data.close()
        self._data = None
        head, order = header_bytes(self._entries, self.metadata)
        final = self.out_dir / f".shard-{k:05d}.safetensors"
        part = self._part(k)
        with final.open("wb") as out, part.open("rb") as src:
            out.write(head)
            for name in order:
                src.seek(self._offsets[name])
                left = self._entries[name][2]
                while left:
                    chunk = src.read(min(left, _COPY_CHUNK))
                    out.write(chunk)
                    left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        part.unlink()
        self.shards.append(final)
        self._entries, self._offsets, self._size = {}, {}, 0

    def finish(self) -> list[Path]:
        """Close the last shard and give the shards their final names (+ the index when more than one)."""
        if self._entries or not self.shards:
            if self._data is None:
                self._data = self._part(len(self.shards)).open("wb")
            self._close()
        n = len(self.shards)
        if n == 1:
            path = self.out_dir / "model.safetensors"
            os.replace(self.shards[0], path)
            return [path]
        names = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        paths = []
        for tmp, name in zip(self.shards, names, strict=True):
            os.replace(tmp, self.out_dir / name)
            paths.append(self.out_dir / name)
        weight_map = {t: names[k] for t, k in self.weight_map.items()}
        index = self.out_dir / INDEX
        index.write_text(json.dumps({"metadata": {"total_size": self.total}, "weight_map": weight_map}, indent=2))
        return [*paths, index]

    def abort(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None
        for p in [*self.shards, *self.out_dir.glob(".shard-*.part")]:
            p.unlink(missing_ok=True)
