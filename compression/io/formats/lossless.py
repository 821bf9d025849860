"""Encodings: how the finished artifact's files are stored, on top of its formats.

``lossless`` (``output.encoding = "lossless"``, or a recipe's last step ``{"method": "lossless"}`` kept
for compatibility): every ``*.safetensors`` is PZST-encoded in place into ``*.safetensors.pzst`` and
``pack.json`` indexes the original files (presso.codec). It is exact: ``presso unpack`` and
``presso download`` restore byte-identical files, and ``presso.load`` decodes the tensors in memory.
Plain transformers finds no weights in an encoded directory and raises.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from presso.codec.container import decode_bytes
from presso.codec.files import INDEX, SUFFIX, is_packed, pack_dir, read_index


class Encoding:
    name: ClassVar[str]
    loaders: ClassVar[tuple[str, ...]]

    def encode(self, out_dir: Path, **options: Any) -> dict[str, Any]:
        raise NotImplementedError

    def present(self, root: Path) -> bool:
        raise NotImplementedError

    def holds(self, root: Path, rel: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, root: Path, rel: str) -> bytes:
        raise NotImplementedError

    def weight_files(self, root: Path) -> list[str]:
        raise NotImplementedError


class Lossless(Encoding):
    name = "lossless"
    loaders = ("presso.load",)  # and every loader of the formats inside, after `presso unpack` / download

    def encode(self, out_dir: Path, chunk_bytes: int = 1 << 20, **_: Any) -> dict[str, Any]:
        """Encode ``out_dir`` in place; returns sizes before/after (safetensors only) and timing."""
        out_dir = Path(out_dir)
        if is_packed(out_dir):
            return {"skipped": "already packed"}
        t0 = time.perf_counter()
        pack_dir(out_dir, out_dir, chunk_bytes=chunk_bytes)
        entries = [e for e in read_index(out_dir)["files"] if e.get("packed")]
        before = sum(int(e["bytes"]) for e in entries)
        after = sum(int(e["packed_bytes"]) for e in entries)
        return {
            "files": len(entries),
            "bytes_before": before,
            "bytes_after": after,
            "ratio": after / before if before else 1.0,
            "seconds": time.perf_counter() - t0,
            "suffix": SUFFIX,
            "index": INDEX,
        }

    def present(self, root: Path) -> bool:
        return is_packed(Path(root)) and Path(root).is_dir()

    def _entry(self, root: Path, rel: str) -> dict[str, Any] | None:
        return next((e for e in read_index(root)["files"] if e.get("name") == rel), None)

    def holds(self, root: Path, rel: str) -> bool:
        return self._entry(root, rel) is not None

    def read_bytes(self, root: Path, rel: str) -> bytes:
        entry = self._entry(root, rel)
        if entry is None:
            raise FileNotFoundError(Path(root) / rel)
        path = Path(root) / (entry.get("packed") or rel)
        data = path.read_bytes()
        return decode_bytes(data) if entry.get("packed") else data

    def weight_files(self, root: Path) -> list[str]:
        return sorted(e["name"] for e in read_index(root)["files"]
                      if "/" not in e["name"] and e["name"].endswith(".safetensors"))
