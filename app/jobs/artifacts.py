"""Artifact layout in the store, and the public manifest built from the stored one.

Keys: ``tenants/{tenant}/jobs/{job}/attempt-{n}/<file>``; ``manifest.json`` beside the files is
written last and is what publishes a job.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from presso.app.core.errors import ArtifactNotReady, NotFound
from presso.app.jobs.models import Job, JobState
from presso.app.jobs.schemas import ArtifactFile, ArtifactManifest
from presso.app.storage import ArtifactStore, ObjectMissing

MANIFEST = "manifest.json"
REPORT = "report.json"
PACK_INDEX = "pack.json"  # written by presso.codec.files.pack_dir


def attempt_prefix(tenant_id: str, job_id: str, attempt: int) -> str:
    return f"tenants/{tenant_id}/jobs/{job_id}/attempt-{attempt}"


def stored_manifest(job: Job, store: ArtifactStore) -> dict[str, Any]:
    if job.state != JobState.succeeded.value or not job.manifest_key:
        raise ArtifactNotReady(f"job {job.id} is {job.state}; artifacts exist once it has succeeded")
    try:
        data: dict[str, Any] = json.loads(store.get_bytes(job.manifest_key))
    except ObjectMissing as exc:
        raise NotFound(f"artifact of job {job.id} is missing from the store") from exc
    return data


def file_entry(manifest: dict[str, Any], path: str) -> dict[str, Any]:
    for entry in manifest["files"]:
        if entry["path"] == path:
            return dict(entry)
    raise NotFound(f"no file {path!r} in the artifact")


def public_manifest(job: Job, store: ArtifactStore, *, base_url: str, expires_s: int) -> ArtifactManifest:
    manifest = stored_manifest(job, store)
    files = []
    presigned = False
    for entry in manifest["files"]:
        url = store.presigned_url(entry["key"], expires_s)
        if url is None:
            url = f"{base_url.rstrip('/')}/v1/jobs/{job.id}/files/{quote(entry['path'])}"
        else:
            presigned = True
        files.append(ArtifactFile(path=entry["path"], size=entry["size"], sha256=entry["sha256"], url=url))
    return ArtifactManifest(
        job_id=job.id, attempt=manifest["attempt"], created_at=manifest["created_at"],
        expires_in_s=expires_s if presigned else None, files=files,
        decoded_files=decoded_files(job, store, manifest, base_url=base_url),
    )


def decoded_files(job: Job, store: ArtifactStore, manifest: dict[str, Any], *, base_url: str) -> list[ArtifactFile]:
    """The plain files behind a lossless-encoded artifact, from its pack.json index."""
    if not any(e["path"] == PACK_INDEX for e in manifest["files"]):
        return []
    index = json.loads(store.get_bytes(file_entry(manifest, PACK_INDEX)["key"]))
    return [
        ArtifactFile(path=e["name"], size=e["bytes"], sha256=e["sha256"],
                     url=f"{base_url.rstrip('/')}/v1/jobs/{job.id}/decoded/{quote(e['name'])}")
        for e in index.get("files", [])
        if e.get("packed")
    ]


def report(job: Job, store: ArtifactStore) -> dict[str, Any]:
    manifest = stored_manifest(job, store)
    entry = file_entry(manifest, REPORT)
    try:
        data: dict[str, Any] = json.loads(store.get_bytes(entry["key"]))
    except ObjectMissing as exc:
        raise NotFound(f"report of job {job.id} is missing from the store") from exc
    return data
