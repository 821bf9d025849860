"""The ArtifactStore protocol every backend implements."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class ObjectMissing(KeyError):
    """The key names no object."""


def validate_key(key: str) -> str:
    """Keys are relative, '/'-separated, with no empty, '.' or '..' parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"bad store key {key!r}")
    return key


class ArtifactStore(Protocol):
    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> None:
        """Upload a local file (multipart when large)."""

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None: ...

    def get_bytes(self, key: str) -> bytes:
        """Raise ObjectMissing when absent."""

    def download_file(self, key: str, dest: Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A time-limited GET URL, or None when the store cannot make one (the API serves the file)."""

    def local_path(self, key: str) -> Path | None:
        """The file on disk for a local store, else None."""

    def ping(self) -> None:
        """Raise when the store is unreachable."""
