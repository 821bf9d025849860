"""Dedup: a job whose inputs match a succeeded job of the same tenant gets that job's artifact, not a new run.

The key is the sha256 of (Presso's version, the request without its URIs, the sha256 of every fetched model file,
of the calibration, the evaluation data and the task files): what the compression reads, by content, so a model
overwritten under the same URI is a new key and the same model under another URI is the same one. It is known only after
the fetch (the URI names no revision), so a duplicate costs its fetch and hashing but no compression. Tenants
never share artifacts. ``force: true`` on the request turns it off.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from presso.app.jobs.models import Job, JobState
from presso.compression.version import presso_version

URI_FIELDS = (("model_uri",), ("calibration", "uri"), ("evaluation", "uri"))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over every file under ``root`` (relative path and content digest, sorted)."""
    digest = hashlib.sha256()
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in paths:
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def dedup_key(request: dict[str, Any], model: Path, calibration: Path | None, evaluation: Path | None,
              tasks: list[Path] | None = None) -> str:
    """The content key of a job (see the module docstring)."""
    stripped = json.loads(json.dumps(request))
    for path in URI_FIELDS:
        node = stripped
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    stripped.pop("force", None)
    for task in (stripped.get("evaluation") or {}).get("tasks") or []:
        if isinstance(task, dict):
            task.pop("uri", None)  # read by content below
    parts = {
        "presso": presso_version(),
        "request": stripped,
        "model": tree_digest(model),
        "calibration": tree_digest(calibration) if calibration else None,
        "evaluation": tree_digest(evaluation) if evaluation else None,
    }
    if tasks:  # evaluation.tasks files (issue 23), by content; absent otherwise so older keys stay the same
        parts["tasks"] = [tree_digest(t) for t in tasks]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def find_twin(factory: sessionmaker[Session], *, tenant_id: str, key: str, exclude: str) -> Job | None:
    """The newest succeeded job of the tenant with this key and an artifact."""
    with factory() as session:
        job = session.scalar(
            select(Job).where(Job.tenant_id == tenant_id, Job.dedup_key == key, Job.id != exclude,
                              Job.state == JobState.succeeded.value, Job.manifest_key.is_not(None))
            .order_by(Job.finished_at.desc()).limit(1))
        if job is not None:
            session.expunge(job)
        return job


def check(factory: sessionmaker[Session], claim: Any, tmp: Path) -> Job | None:
    """After the fetch: store the attempt's dedup key on the row and return the twin to reuse (None: run it,
    also when the request has ``force``)."""
    from sqlalchemy import update

    with factory() as session:
        force = bool(session.scalar(select(Job.force).where(Job.id == claim.job_id)))
    inputs = {name: tmp / name for name in ("calibration", "evaluation") if (tmp / name).exists()}
    tasks = [tmp / f"task{i}" for i in range(len((claim.request.get("evaluation") or {}).get("tasks") or []))]
    key = dedup_key({**claim.request, "model_uri": claim.model_uri}, tmp / "model", inputs.get("calibration"),
                    inputs.get("evaluation"), [t for t in tasks if t.exists()])
    with factory() as session:
        session.execute(update(Job).where(Job.id == claim.job_id, Job.attempt == claim.attempt)
                        .values(dedup_key=key))
        session.commit()
    if force:
        return None
    return find_twin(factory, tenant_id=claim.tenant_id, key=key, exclude=claim.job_id)
