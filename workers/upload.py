"""Upload a finished artifact: every file under an attempt-scoped key with its sha256, manifest last."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from presso.app.core.db import utcnow
from presso.app.jobs.artifacts import MANIFEST, attempt_prefix
from presso.app.storage import ArtifactStore
from presso.codec.files import sha256_file
from presso.workers.lease import Claim

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
) -> str:
    """Upload the files, then the manifest. Returns the manifest key."""
    prefix = attempt_prefix(claim.tenant_id, claim.job_id, claim.attempt)
    files = artifact_files(out_dir, listed)
    entries: list[dict[str, Any]] = []
    for i, rel in enumerate(files):
        if not still_owner():
            raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} stopped during upload")
        path = out_dir / rel
        digest = sha256_file(path)
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
    log.info("job %s attempt %d: uploaded %d files, manifest %s", claim.job_id, claim.attempt, len(entries), key)
    return key
