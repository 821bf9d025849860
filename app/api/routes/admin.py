"""/v1/admin: tenants and API keys (admin key only)."""

from __future__ import annotations

from fastapi import APIRouter, status

from presso.app.api.deps import AdminDep, SessionDep
from presso.app.tenants import service
from presso.app.tenants.schemas import KeyCreate, KeyCreated, KeyPublic, TenantCreate, TenantPublic

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminDep])


@router.post("/tenants", response_model=TenantPublic, status_code=status.HTTP_201_CREATED)
def create_tenant(body: TenantCreate, session: SessionDep) -> TenantPublic:
    tenant = service.create_tenant(session=session, name=body.name, max_active_jobs=body.max_active_jobs)
    return TenantPublic.model_validate(tenant)


@router.get("/tenants", response_model=list[TenantPublic])
def list_tenants(session: SessionDep) -> list[TenantPublic]:
    return [TenantPublic.model_validate(t) for t in service.list_tenants(session=session)]


@router.post("/tenants/{tenant_id}/keys", response_model=KeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(tenant_id: str, body: KeyCreate, session: SessionDep) -> KeyCreated:
    """Create an API key. The secret is in this response only."""
    key, secret = service.create_key(session=session, tenant_id=tenant_id, name=body.name)
    return KeyCreated(**KeyPublic.model_validate(key).model_dump(), secret=secret)


@router.get("/tenants/{tenant_id}/keys", response_model=list[KeyPublic])
def list_keys(tenant_id: str, session: SessionDep) -> list[KeyPublic]:
    service.get_tenant(session=session, tenant_id=tenant_id)
    return [KeyPublic.model_validate(k) for k in service.list_keys(session=session, tenant_id=tenant_id)]


@router.post("/keys/{key_id}/revoke", response_model=KeyPublic)
def revoke_key(key_id: str, session: SessionDep) -> KeyPublic:
    return KeyPublic.model_validate(service.revoke_key(session=session, key_id=key_id))
