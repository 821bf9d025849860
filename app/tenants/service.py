"""Tenant and API-key management, and key authentication."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from presso.app.core.db import utcnow
from presso.app.core.errors import IdempotencyConflict, NotFound
from presso.app.core.security import generate_key, hash_key
from presso.app.tenants.models import ApiKey, Tenant

DEFAULT_TENANT = "default"


def create_tenant(*, session: Session, name: str, max_active_jobs: int | None = None) -> Tenant:
    tenant = Tenant(name=name, max_active_jobs=max_active_jobs)
    session.add(tenant)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise IdempotencyConflict(f"a tenant named {name!r} exists") from exc
    return tenant


def get_tenant(*, session: Session, tenant_id: str) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id}")
    return tenant


def list_tenants(*, session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at)))


def ensure_tenant(*, session: Session, name: str = DEFAULT_TENANT) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant
    try:
        return create_tenant(session=session, name=name)
    except IdempotencyConflict:
        found = session.scalar(select(Tenant).where(Tenant.name == name))
        assert found is not None
        return found


def create_key(*, session: Session, tenant_id: str, name: str = "") -> tuple[ApiKey, str]:
    """Returns the row and the secret; the secret is not stored and cannot be shown again."""
    get_tenant(session=session, tenant_id=tenant_id)
    new = generate_key()
    key = ApiKey(tenant_id=tenant_id, name=name, prefix=new.prefix, key_hash=new.key_hash)
    session.add(key)
    session.commit()
    return key, new.secret


def list_keys(*, session: Session, tenant_id: str) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)))


def revoke_key(*, session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no key {key_id}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    return key


def authenticate(*, session: Session, secret: str) -> tuple[Tenant, ApiKey] | None:
    row = session.execute(
        select(Tenant, ApiKey)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
    ).first()
    return (row[0], row[1]) if row else None


def webhook_secret(session: Session, tenant_id: str, *, rotate: bool = False) -> str:
    """The tenant's webhook signing key (created on first use; a new one when ``rotate``). Commits."""
    import secrets

    tenant = get_tenant(session=session, tenant_id=tenant_id)
    if rotate or not tenant.webhook_secret:
        tenant.webhook_secret = f"whsec_{secrets.token_hex(24)}"
        session.commit()
    return tenant.webhook_secret
