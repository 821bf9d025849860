"""Upload a streamed job's finished shards while later blocks compute (issue 21, docs/streaming.md).

``ShardUploads`` is ``run_local``'s ``on_shard``: the library calls it with each output shard once the shard is
closed (compression.io.streamwrite). The call hard-links the file into the attempt's work directory (the library
renames it later and publishes its directory at the end; a copy where a link is refused), records the file's
identity (device, inode, size, mtime) and queues it. One background thread hashes each queued file (sha256) and
uploads it (``store.put_file``: boto3's transfer manager, multipart when large) to
``<attempt prefix>/shards/<n>.safetensors`` while compression goes on.

Nothing is published by these uploads: the manifest, which ``upload_artifact`` writes last, is what publishes,
and it names a background key only for an artifact file that is the same file as the one uploaded (same
identity, or same size and sha256); every other file is uploaded there as before. A failed or cancelled attempt
writes no manifest, so its uploaded shards stay unpublished under its own attempt prefix, as any other file of
an attempt that dies during upload.

An upload error is kept and raised at the next ``on_shard`` call (the library aborts the job then) or at
``wait()``: it becomes the job's failure reason (``ShardUploadFailed``). ``close()`` drops what is still queued
and waits for the upload in progress.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from presso.app.core.db import utcnow
from presso.app.jobs.artifacts import attempt_prefix
from presso.app.storage import ArtifactStore
from presso.codec.files import sha256_file
from presso.workers.lease import Claim

log = logging.getLogger(__name__)
LINKS = ".shard-uploads"
Identity = tuple[int, int, int, int]


class ShardUploadFailed(RuntimeError):
    """A background upload of a finished shard failed (an infrastructure error: the job is retried)."""


def identity(path: Path) -> Identity:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Uploaded:
    n: int
    key: str
    size: int
    sha256: str
    identity: Identity
    closed_at: str  # when the library handed the shard over (UTC, ISO 8601)
    uploaded_at: str  # when its upload completed
    seconds: float  # hashing and upload


class ShardUploads:
    def __init__(self, store: ArtifactStore, claim: Claim, work_dir: Path,
                 still_owner: Callable[[], bool] = lambda: True) -> None:
        self.store, self.claim, self.still_owner = store, claim, still_owner
        self.prefix = f"{attempt_prefix(claim.tenant_id, claim.job_id, claim.attempt)}/shards"
        self.links = Path(work_dir) / LINKS
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard-upload-{claim.job_id}")
        self.futures: list[Future[Uploaded]] = []
        self.used: dict[str, Uploaded] = {}  # artifact path -> the background upload the manifest names

    def __call__(self, path: Path) -> None:
        self.raise_failed()
        n = len(self.futures)
        self.links.mkdir(parents=True, exist_ok=True)
        link = self.links / f"{n:05d}.safetensors"
        try:
            os.link(path, link)
        except OSError:  # a file system without hard links: a copy (the disk holds the shard twice for a while)
            shutil.copyfile(path, link)
        closed = utcnow().isoformat()
        self.futures.append(self.pool.submit(self._upload, n, link, identity(path), closed))

    def _upload(self, n: int, link: Path, ident: Identity, closed: str) -> Uploaded:
        if not self.still_owner():
            raise ShardUploadFailed(f"job {self.claim.job_id} attempt {self.claim.attempt} stopped")
        t = time.perf_counter()
        digest = sha256_file(link)
        key = f"{self.prefix}/{n:05d}.safetensors"
        self.store.put_file(key, link, sha256=digest)
        size = link.stat().st_size
        link.unlink()  # the artifact's own name for the file stays
        done = Uploaded(n=n, key=key, size=size, sha256=digest, identity=ident, closed_at=closed,
                        uploaded_at=utcnow().isoformat(), seconds=round(time.perf_counter() - t, 3))
        log.info("job %s attempt %d: shard %d (%d B) uploaded in the background in %.2f s", self.claim.job_id,
                 self.claim.attempt, n, size, done.seconds)
        return done

    def _result(self, n: int, future: Future[Uploaded]) -> Uploaded:
        try:
            return future.result()
        except ShardUploadFailed:
            raise
        except Exception as exc:
            raise ShardUploadFailed(f"uploading artifact shard {n} in the background failed: "
                                    f"{type(exc).__name__}: {exc}") from exc

    def raise_failed(self) -> None:
        """Raise the first background error so far (the library aborts the job)."""
        for n, future in enumerate(self.futures):
            if future.done() and future.exception() is not None:
                self._result(n, future)

    def wait(self) -> list[Uploaded]:
        """Wait for every queued upload; raise the first error."""
        return [self._result(n, f) for n, f in enumerate(self.futures)]

    def match(self, path: Path, rel: str, sha256: str | None = None) -> Uploaded | None:
        """The finished background upload of the artifact file ``path`` (``rel`` in the artifact): the same file
        (identity), or, given ``sha256``, the same size and sha256."""
        ident = identity(path)
        for f in self.futures:
            if not f.done() or f.exception() is not None:
                continue
            up = f.result()
            if up.identity == ident or (sha256 is not None and (up.size, up.sha256) == (ident[2], sha256)):
                self.used[rel] = up
                return up
        return None

    def metrics(self) -> list[dict[str, Any]]:
        """One record per background upload the manifest names, in the artifact's order."""
        return [{"path": rel, "key": up.key, "size": up.size, "closed_at": up.closed_at,
                 "uploaded_at": up.uploaded_at, "seconds": up.seconds} for rel, up in sorted(self.used.items())]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.links, ignore_errors=True)

    def __enter__(self) -> ShardUploads:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
