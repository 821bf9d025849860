"""A worker's content-addressed model cache: fetched model directories shared by the jobs of one machine.

Torch-free, and it knows nothing of URIs: ``presso.fetch.cached`` computes the key from the guarded listing
and fills a missing entry through the ordinary fetch plan. docs/model-cache.md describes the rules.

Layout under the root::

    entries/<key>/files/<name>    the fetched (and sanitized) files, read-only
    entries/<key>/manifest.json   per file: size, sha256, a sample digest, mtime; the total and the caller's meta
    entries/<key>/used            its mtime is the entry's last use (least-recently-used eviction)
    staging/<key>.<pid>.<rand>/   an insert in progress, renamed to entries/<key> once complete and synced
    locks/<key>.lock              flock, exclusive while a process looks up, fills, links or evicts the entry
    locks/evict.lock              one eviction pass at a time
    trash/                        entries being deleted

An entry exists only after the rename of a complete staging directory, so a killed worker leaves at most a
staging directory, which the next holder of that key's lock (or an eviction pass) deletes. A job gets hard
links to the entry's files (a copy where links fail, e.g. across filesystems): deleting the entry later never
touches a running job's files.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from presso.codec.files import sha256_file

log = logging.getLogger(__name__)
FORMAT = 1
MANIFEST = "manifest.json"
SAMPLE_BYTES = 1 << 20
_KEY = re.compile(r"^[0-9a-f]{64}$")
Meta = dict[str, Any]


class Damaged(Exception):
    """An entry whose files no longer match its manifest."""


@contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created if missing); yields False when ``blocking`` is off and it is
    taken. Released when the descriptor closes, also when the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sample_digest(path: Path, size: int) -> str:
    """sha256 of the size, the first and the last ``SAMPLE_BYTES``: the cheap check of an entry on every use."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


class ModelCache:
    """Entries under ``root`` kept to ``quota_bytes`` (least recently used go first, never one in use).

    ``verify``: ``"sample"`` (default) checks each file's size, mtime and sample digest on every use;
    ``"sha256"`` re-hashes every file on every use (as slow as reading the model).
    """

    def __init__(self, root: Path, quota_bytes: int, *, verify: Literal["sample", "sha256"] = "sample") -> None:
        if quota_bytes <= 0:
            raise ValueError("a model cache needs a quota > 0")
        self.root = Path(root).expanduser().resolve()
        self.quota_bytes = int(quota_bytes)
        self.verify = verify
        for sub in ("entries", "staging", "locks", "trash"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def entry_dir(self, key: str) -> Path:
        return self.root / "entries" / key

    def _lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    # The one operation ----------------------------------------------------------------------------------
    def fetch(
        self,
        key: str,
        dest: Path,
        fill: Callable[[Path], Meta],
        *,
        accept: Callable[[Meta], None] = lambda meta: None,
        expected_bytes: int | None = None,
    ) -> tuple[Meta, bool]:
        """Put entry ``key``'s files into the empty directory ``dest``; return (meta, hit).

        On a hit, ``accept(meta)`` may refuse the entry (it raises) before anything is linked. On a miss,
        ``fill(dir)`` writes the files into an empty staging directory and returns the meta (JSON) to keep;
        its errors propagate and leave nothing behind. ``expected_bytes`` (the listing's total) makes room
        before the download."""
        if not _KEY.match(key):
            raise ValueError(f"not a cache key: {key!r}")
        with _flock(self._lock_path(key)):
            manifest = self._valid(key)
            if manifest is not None:
                accept(manifest["meta"])
                self._link(key, manifest, dest)
                os.utime(self.entry_dir(key) / "used")
                log.info("model cache hit %s (%d bytes)", key[:16], manifest["total_bytes"])
                return manifest["meta"], True
            log.info("model cache miss %s", key[:16])
            if expected_bytes is not None and expected_bytes <= self.quota_bytes:
                self.evict(room=expected_bytes)
            manifest, cached = self._insert(key, dest, fill)
        if cached:
            self.evict(keep=key)
        return manifest["meta"], False

    def _insert(self, key: str, dest: Path, fill: Callable[[Path], Meta]) -> tuple[Meta, bool]:
        """Fill a staging directory and rename it into place; link its files into ``dest``. Returns (manifest,
        cached): a model over the whole quota is not cached, its files are moved into ``dest``."""
        self._clear_staging(key)
        staging = self.root / "staging" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        files_dir = staging / "files"
        files_dir.mkdir(parents=True)
        try:
            meta = fill(files_dir)
            total = sum(p.stat().st_size for p in files_dir.iterdir())
            if total > self.quota_bytes:
                log.info("model of %d bytes is over the cache quota of %d: not cached", total, self.quota_bytes)
                for path in files_dir.iterdir():
                    os.rename(path, dest / path.name)
                return {"meta": meta, "total_bytes": total}, False
            manifest = self._seal(files_dir, meta)
            for f in manifest["files"]:
                (files_dir / f["name"]).chmod(0o444)
            (staging / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
            (staging / "used").touch()
            for path in (staging / MANIFEST, files_dir, staging):
                _fsync(path)
            os.rename(staging, self.entry_dir(key))
            _fsync(self.root / "entries")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._link(key, manifest, dest)
        return manifest, True

    # Entries --------------------------------------------------------------------------------------------
    @staticmethod
    def _seal(files_dir: Path, meta: Meta) -> Meta:
        """Sync every file to disk and record what was stored (hashed from the disk copy)."""
        files: list[Meta] = []
        for path in sorted(files_dir.iterdir()):
            _fsync(path)
            st = path.stat()
            files.append({"name": path.name, "size": st.st_size, "sha256": sha256_file(path),
                          "sample": sample_digest(path, st.st_size), "mtime_ns": st.st_mtime_ns})
        total = sum(int(f["size"]) for f in files)
        return {"format": FORMAT, "files": files, "total_bytes": total, "meta": meta}

    def _valid(self, key: str) -> Meta | None:
        """The entry's manifest if the entry is whole; a damaged entry is discarded (None)."""
        entry = self.entry_dir(key)
        if not entry.is_dir():
            return None
        try:
            manifest: Meta = json.loads((entry / MANIFEST).read_text())
            if manifest.get("format") != FORMAT:
                raise Damaged(f"format {manifest.get('format')!r}")
            for f in manifest["files"]:
                self._check_file(entry / "files" / f["name"], f)
            return manifest
        except (OSError, ValueError, KeyError, TypeError, Damaged) as exc:
            log.warning("model cache entry %s is damaged (%s): discarded, fetching again", key[:16], exc)
            self._discard(key)
            return None

    def _check_file(self, path: Path, f: Meta) -> None:
        st = path.stat()
        if st.st_size != f["size"] or st.st_mtime_ns != f["mtime_ns"]:
            raise Damaged(f"{f['name']} changed size or time")
        if sample_digest(path, st.st_size) != f["sample"]:
            raise Damaged(f"{f['name']} changed content")
        if self.verify == "sha256" and sha256_file(path) != f["sha256"]:
            raise Damaged(f"{f['name']} has another sha256")

    def _link(self, key: str, manifest: Meta, dest: Path) -> None:
        copied = 0
        for f in manifest["files"]:
            name = str(f["name"])
            if "/" in name or name.startswith("."):
                raise Damaged(f"unexpected file name {name!r}")
            src, dst = self.entry_dir(key) / "files" / name, dest / name
            try:
                os.link(src, dst)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(src, dst)
                copied += 1
        if copied:
            log.info("model cache: %d files copied (hard links refused: put the cache on the jobs' filesystem)",
                     copied)

    def _discard(self, key: str) -> None:
        """Detach an entry at once (rename into trash), then delete it. Caller holds the key's lock."""
        trash = self.root / "trash" / f"{key}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.entry_dir(key), trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _clear_staging(self, key: str) -> None:
        """Leftovers of a killed insert of ``key``: never in use, since their writer held the lock we hold."""
        for path in (self.root / "staging").glob(f"{key}.*"):
            log.info("model cache: removing an unfinished insert %s", path.name)
            shutil.rmtree(path, ignore_errors=True)

    # Eviction -------------------------------------------------------------------------------------------
    def usage(self) -> list[tuple[int, int, str]]:
        """(last use ns, bytes, key) of every entry."""
        found = []
        for entry in (self.root / "entries").iterdir():
            try:
                used = (entry / "used").stat().st_mtime_ns
                size = int(json.loads((entry / MANIFEST).read_text())["total_bytes"])
            except (OSError, ValueError, KeyError):
                used, size = 0, sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            found.append((used, size, entry.name))
        return found

    def evict(self, *, keep: str | None = None, room: int = 0) -> list[str]:
        """Delete least-recently-used entries until they total at most ``quota - room``; skip ``keep`` and every
        entry whose lock another job holds (it is being used or filled). Also sweeps killed inserts."""
        evicted: list[str] = []
        with _flock(self.root / "locks" / "evict.lock"):
            self._sweep()
            entries = sorted(self.usage())
            total = sum(size for _, size, _ in entries)
            for _, size, key in entries:
                if total + room <= self.quota_bytes:
                    break
                if key == keep:
                    continue
                with _flock(self._lock_path(key), blocking=False) as got:
                    if not got:
                        log.info("model cache: %s is in use, not evicted", key[:16])
                        continue
                    self._discard(key)
                total -= size
                evicted.append(key)
                log.info("model cache evicted %s (%d bytes, least recently used)", key[:16], size)
        return evicted

    def _sweep(self) -> None:
        for path in (self.root / "trash").iterdir():
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.root / "staging").iterdir():
            key = path.name.split(".", 1)[0]
            if not _KEY.match(key):
                shutil.rmtree(path, ignore_errors=True)
                continue
            with _flock(self._lock_path(key), blocking=False) as got:
                if got:  # nobody is filling it: a killed insert
                    log.info("model cache: removing an unfinished insert %s", path.name)
                    shutil.rmtree(path, ignore_errors=True)
