"""Files and directories: encode_file/decode_file, pack_dir/unpack_dir, is_packed.

A packed directory holds ``<name>.safetensors.pzst`` for every ``*.safetensors`` of the
original, every other file copied as is, and ``pack.json`` (format, version, and each original
file's name, size and sha256). Outputs are written to a temporary name and renamed, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from presso.codec.container import DecodeStats, EncodeStats, decode_buffer, encode_buffer
from presso.codec.format import MAGIC, unpack
from presso.compression.errors import CodecError

SUFFIX = ".pzst"
INDEX = "pack.json"
PACK_FORMAT = "presso-pack"
PACK_VERSION = 1


def _map(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.empty(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")


def _tmp(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.{os.getpid()}.tmp")


def encode_file(src: Path, dst: Path, *, chunk_bytes: int = 1 << 20, threads: int | None = None) -> EncodeStats:
    src, dst = Path(src), Path(dst)
    parts, stats = encode_buffer(_map(src), chunk_bytes=chunk_bytes, threads=threads)
    tmp = _tmp(dst)
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
    os.replace(tmp, dst)
    return stats


def decode_file(src: Path, dst: Path, *, threads: int | None = None) -> DecodeStats:
    """Restore ``src`` (a PZST file) to ``dst``, checking every block's crc32 and the sha256."""
    src, dst = Path(src), Path(dst)
    data = _map(src)
    tmp = _tmp(dst)
    try:
        size = unpack(data.data, int(data.size)).original_size
        with open(tmp, "wb") as f:
            f.truncate(size)
        out = np.memmap(tmp, dtype=np.uint8, mode="r+") if size else np.empty(0, np.uint8)
        _, stats = decode_buffer(data, out, threads=threads, verify=True)
        if isinstance(out, np.memmap):
            out.flush()
        del out
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return stats


def is_packed(path: Path) -> bool:
    """True for a PZST file, or a directory written by pack_dir."""
    path = Path(path)
    if path.is_dir():
        return (path / INDEX).is_file()
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks: the one digest of artifact files (manifests, pack.json,
    presso.json, uploads)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def pack_dir(src_dir: Path, out_dir: Path, *, chunk_bytes: int = 1 << 20, threads: int | None = None) -> list[Path]:
    """Pack a model directory (``out_dir`` may equal ``src_dir``: then in place). Returns the files written."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    in_place = src_dir.resolve() == out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    written: list[Path] = []
    for path in sorted(p for p in src_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(src_dir).as_posix()
        if rel == INDEX or path.name.startswith("."):
            continue
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {"name": rel, "bytes": path.stat().st_size}
        if path.suffix == ".safetensors":
            stats = encode_file(path, target.with_name(target.name + SUFFIX), chunk_bytes=chunk_bytes, threads=threads)
            entry |= {"sha256": stats.sha256, "packed": rel + SUFFIX, "packed_bytes": stats.encoded_bytes}
            written.append(target.with_name(target.name + SUFFIX))
            if in_place:
                path.unlink()
        else:
            entry["sha256"] = sha256_file(path)
            if not in_place:
                shutil.copy2(path, target)
            written.append(target)
        entries.append(entry)
    index = {"format": PACK_FORMAT, "version": PACK_VERSION, "codec": "PZST/1", "files": entries}
    (out_dir / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    written.append(out_dir / INDEX)
    return written


def _safe_rel(name: object) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        raise CodecError(f"pack.json: bad file name {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise CodecError(f"pack.json: bad file name {name!r}")
    return name


def read_index(src_dir: Path) -> dict[str, Any]:
    try:
        index = json.loads((Path(src_dir) / INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise CodecError(f"{src_dir} is not a packed directory: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != PACK_FORMAT or index.get("version") != PACK_VERSION:
        raise CodecError(f"{src_dir}/{INDEX}: unknown pack format")
    return index


def unpack_dir(src_dir: Path, out_dir: Path, *, threads: int | None = None) -> list[Path]:
    """Restore a packed directory into ``out_dir``; every indexed file is checked against its sha256.

    Files added beside the index after packing (an artifact's ``presso.json`` and ``report.json``) are
    copied as they are; ``pack.json`` and the ``*.pzst`` streams are not (the result is a plain directory)."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    index = read_index(src_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    entries = index.get("files", [])
    known = {INDEX} | {e.get("name") for e in entries} | {e.get("packed") for e in entries if e.get("packed")}
    for path in sorted(p for p in src_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(src_dir).as_posix()
        if rel in known or path.name.startswith(".") or rel.endswith(SUFFIX):
            continue
        target = out_dir / rel
        if path.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        written.append(target)
    for entry in entries:
        name = _safe_rel(entry.get("name"))
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.get("packed"):
            stats = decode_file(src_dir / _safe_rel(entry["packed"]), target, threads=threads)
            digest = stats.sha256
        else:
            if (src_dir / name).resolve() != target.resolve():
                shutil.copy2(src_dir / name, target)
            digest = sha256_file(target)
        if digest != entry.get("sha256"):
            raise CodecError(f"{name}: sha256 mismatch after unpacking")
        written.append(target)
    return written
