"""Upload a finished artifact: every file under an attempt-scoped key with its sha256, manifest last.

A streamed job's shards may have been uploaded already while later blocks computed (presso.workers.shardupload):
the manifest then names those keys, and only the other files are uploaded here."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.app.core.db import utcnow
from presso.app.jobs.artifacts import MANIFEST, attempt_prefix
from presso.app.storage import ArtifactStore
from presso.codec.files import sha256_file
from presso.workers.lease import Claim

if TYPE_CHECKING:
    from presso.workers.shardupload import ShardUploads

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The job was taken from this worker (reaped or cancelled) before its manifest was written."""


def artifact_files(out_dir: Path, listed: Iterable[Path] | None = None) -> list[Path]:
    """Regular files of the artifact, relative to ``out_dir``; links and escapes refused."""
    root = out_dir.resolve()
    candidates = [out_dir / p for p in listed] if listed else [p for p in out_dir.rglob("*") if p.is_file()]
    found: list[Path] = []
    for path in candidates:
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"artifact entry {path} is not a regular file")
        rel = path.resolve().relative_to(root)
        if rel.as_posix() == MANIFEST:
            continue
        found.append(rel)
    return sorted(set(found))


def upload_artifact(
    store: ArtifactStore, claim: Claim, out_dir: Path, *, listed: Iterable[Path] | None = None,
    still_owner: Callable[[], bool] = lambda: True, progress: Callable[[str, float], None] | None = None,
    uploaded: ShardUploads | None = None,
) -> str:
    """Upload the files, then the manifest. Returns the manifest key. ``uploaded``: the background uploads of
    the job's shards (finished: ``uploaded.wait()`` first); a file it holds is not uploaded again."""
    prefix = attempt_prefix(claim.tenant_id, claim.job_id, claim.attempt)
    files = artifact_files(out_dir, listed)
    entries: list[dict[str, Any]] = []
    for i, rel in enumerate(files):
        if not still_owner():
            raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} stopped during upload")
        path = out_dir / rel
        early = uploaded.match(path, rel.as_posix()) if uploaded else None
        if early is None:
            digest = sha256_file(path)
            early = uploaded.match(path, rel.as_posix(), digest) if uploaded else None
        if early is not None:
            entries.append({"path": rel.as_posix(), "size": early.size, "sha256": early.sha256, "key": early.key})
        else:
            key = f"{prefix}/{rel.as_posix()}"
            store.put_file(key, path, sha256=digest)
            entries.append({"path": rel.as_posix(), "size": path.stat().st_size, "sha256": digest, "key": key})
        if progress:
            progress("upload", (i + 1) / max(1, len(files)))
    if not still_owner():
        raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} stopped before its manifest")
    manifest = {
        "job_id": claim.job_id, "tenant_id": claim.tenant_id, "attempt": claim.attempt,
        "created_at": utcnow().isoformat(), "files": entries,
    }
    key = f"{prefix}/{MANIFEST}"
    store.put_bytes(key, json.dumps(manifest, indent=2).encode(), content_type="application/json")
    log.info("job %s attempt %d: uploaded %d files (%d of them earlier, in the background), manifest %s",
             claim.job_id, claim.attempt, len(entries), len(uploaded.used) if uploaded else 0, key)
    return key
