"""file:// source: regular files under the configured roots, symlinks resolved and re-checked."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

from presso.fetch.errors import NotFoundError, UnsafeModelFile, URINotAllowed
from presso.fetch.limits import Budget
from presso.fetch.pipeline import copy_stream
from presso.fetch.uri import is_under_roots

log = logging.getLogger(__name__)


class LocalSource:
    """Files of one local directory (top level only) or a single local file."""

    def __init__(self, base: Path, roots: tuple[Path, ...]) -> None:
        self.base = base
        self.roots = roots

    def _resolve(self, name: str) -> Path:
        path = (self.base / name).resolve(strict=False)
        if not is_under_roots(path, self.roots):
            raise URINotAllowed(f"{name!r} resolves outside the allowed local roots")
        try:
            mode = path.stat().st_mode
        except FileNotFoundError as exc:
            raise NotFoundError(f"{name!r} does not exist") from exc
        if not stat.S_ISREG(mode):
            raise UnsafeModelFile(f"{name!r} is not a regular file")
        return path

    def list_dir(self) -> list[tuple[str, int | None]]:
        if not self.base.is_dir():
            raise NotFoundError(f"{self.base} is not a directory")
        entries: list[tuple[str, int | None]] = []
        with os.scandir(self.base) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    log.info("skipping sub-directory %s of a local model", entry.name)
                    continue
                if entry.is_symlink():
                    # A link may point anywhere; accept it only when its target is inside a root.
                    self._resolve(entry.name)
                entries.append((entry.name, entry.stat(follow_symlinks=True).st_size))
        return entries

    def read_prefix(self, name: str, nbytes: int) -> tuple[bytes, int | None]:
        path = self._resolve(name)
        with path.open("rb") as fh:
            return fh.read(nbytes), os.fstat(fh.fileno()).st_size

    def download(self, name: str, out: BinaryIO, budget: Budget) -> int:
        path = self._resolve(name)
        with path.open("rb") as fh:
            budget.check_declared(name, os.fstat(fh.fileno()).st_size)
            return copy_stream(fh, out, name, budget)


def local_source(path: Path, roots: tuple[Path, ...]) -> tuple[LocalSource, str | None]:
    """(source, single file name or None for a directory) for an already-resolved local path."""
    if not is_under_roots(path, roots):
        raise URINotAllowed(f"{path} is not under an allowed local root")
    if path.is_dir():
        return LocalSource(path, roots), None
    if path.is_file():
        return LocalSource(path.parent, roots), path.name
    if path.exists():
        raise UnsafeModelFile(f"{path} is not a regular file")
    raise NotFoundError(f"{path} does not exist")
