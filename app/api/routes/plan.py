"""Resource plans: POST /v1/plan (a dry run of POST /v1/jobs) and GET /v1/jobs/{id}/plan.

A plan estimates peak GPU memory, host memory, disk and wall time per configured worker class from the model's
config.json and safetensors headers (compression/plan.py; docs/service.md, "Resource planner").
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from presso.app.api.deps import SessionDep, SettingsDep, TenantDep
from presso.app.jobs import planning, service
from presso.app.jobs.schemas import JobCreate

router = APIRouter(prefix="/v1", tags=["plan"])


@router.post("/plan")
def plan_job(body: JobCreate, settings: SettingsDep, tenant: TenantDep) -> dict[str, Any]:
    """Dry run: what the job would need, per worker class, and which classes can run it. Reads the model's
    headers wherever it is (s3://, https://, file://; ranged reads only); ``status: unknown`` with a reason
    when they cannot be read. ``refusal`` is the message a submit would be refused with (or null)."""
    return planning.plan_request(body.model_dump(mode="json"), settings, remote=True)


@router.get("/jobs/{job_id}/plan")
def get_job_plan(job_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> dict[str, Any]:
    """The job's plan: the one made at submit or by its worker before the fetch, else planned now."""
    job = service.get_job(session=session, tenant_id=tenant.id, job_id=job_id)
    if job.plan:
        return dict(job.plan)
    return planning.plan_request({**job.request, "model_uri": job.model_uri}, settings, remote=True)
