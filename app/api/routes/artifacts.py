"""/v1/jobs/{id}/artifact, /report and /files/{path}: tenant check first, then URLs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.background import BackgroundTask

from presso.app.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from presso.app.core.errors import ArtifactCorrupt
from presso.app.jobs import artifacts, service
from presso.app.jobs.schemas import ArtifactManifest

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])


@router.get("/{job_id}/artifact", response_model=ArtifactManifest)
def get_artifact(
    job_id: str, request: Request, session: SessionDep, tenant: TenantDep, store: StoreDep, settings: SettingsDep
) -> ArtifactManifest:
    """The manifest: every file with size, sha256 and a download URL."""
    job = service.get_job(session=session, tenant_id=tenant.id, job_id=job_id)
    return artifacts.public_manifest(
        job, store, base_url=str(request.base_url), expires_s=settings.presign_expires_s
    )


@router.get("/{job_id}/report")
def get_report(job_id: str, session: SessionDep, tenant: TenantDep, store: StoreDep) -> dict[str, Any]:
    """The per-layer breakdown (report.json of the artifact)."""
    job = service.get_job(session=session, tenant_id=tenant.id, job_id=job_id)
    return artifacts.report(job, store)


@router.get("/{job_id}/files/{path:path}", response_class=Response)
def get_file(
    job_id: str, path: str, session: SessionDep, tenant: TenantDep, store: StoreDep, settings: SettingsDep
) -> Response:
    """One artifact file: streamed from a local store, or a redirect to a presigned URL."""
    job = service.get_job(session=session, tenant_id=tenant.id, job_id=job_id)
    entry = artifacts.file_entry(artifacts.stored_manifest(job, store), path)
    local = store.local_path(entry["key"])
    if local is not None:
        return FileResponse(local, media_type="application/octet-stream", filename=path.rsplit("/", 1)[-1])
    url = store.presigned_url(entry["key"], settings.presign_expires_s)
    assert url is not None
    return RedirectResponse(url, status_code=307)


@router.get("/{job_id}/decoded/{path:path}", response_class=Response)
def get_decoded_file(job_id: str, path: str, session: SessionDep, tenant: TenantDep, store: StoreDep) -> Response:
    """A lossless-encoded file decoded to plain safetensors (sha256-verified before it is sent)."""
    from presso.codec.files import SUFFIX, decode_file  # torch-free
    from presso.compression.errors import CodecError

    job = service.get_job(session=session, tenant_id=tenant.id, job_id=job_id)
    entry = artifacts.file_entry(artifacts.stored_manifest(job, store), path + SUFFIX)
    tmp = Path(tempfile.mkdtemp(prefix="presso-decode-"))
    try:
        store.download_file(entry["key"], tmp / "encoded")
        decode_file(tmp / "encoded", tmp / "decoded")
    except CodecError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactCorrupt(f"{path}: stored object failed verification: {exc.message}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FileResponse(tmp / "decoded", media_type="application/octet-stream", filename=path.rsplit("/", 1)[-1],
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))
