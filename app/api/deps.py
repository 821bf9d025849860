"""Typed dependencies: SessionDep, TenantDep, AdminDep, StoreDep, SettingsDep, PublisherDep."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from presso.app.core import logs
from presso.app.core.errors import Forbidden, RateLimited, Unauthorized
from presso.app.core.queue import Publisher
from presso.app.core.ratelimit import RateLimiter
from presso.app.core.security import bearer_token, same_secret
from presso.app.core.settings import Settings
from presso.app.storage import ArtifactStore
from presso.app.tenants.models import Tenant
from presso.app.tenants.service import authenticate, ensure_tenant


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
AuthHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
KeyHeader = Annotated[str | None, Header(alias="X-API-Key", include_in_schema=False)]


def current_tenant(
    request: Request, session: SessionDep, settings: SettingsDep, authorization: AuthHeader = None,
    x_api_key: KeyHeader = None,
) -> Tenant:
    """The caller's tenant from its API key (or the default tenant when auth is disabled)."""
    if settings.auth == "disabled":
        return ensure_tenant(session=session)
    secret = bearer_token(authorization, x_api_key)
    if not secret:
        raise Unauthorized("missing API key (Authorization: Bearer presso_sk_...)")
    found = authenticate(session=session, secret=secret)
    if found is None:
        raise Unauthorized("invalid or revoked API key")
    tenant, key = found
    logs.set_value("tenant_id", tenant.id)
    limiter: RateLimiter = request.app.state.rate_limiter
    wait = limiter.acquire(key.id)
    if wait > 0:
        raise RateLimited(f"rate limit exceeded; retry in {wait:.1f}s", retry_after_s=wait)
    return tenant


def require_admin(settings: SettingsDep, authorization: AuthHeader = None, x_api_key: KeyHeader = None) -> None:
    if settings.admin_key is None:
        raise Forbidden("the admin API is disabled (set PRESSO_ADMIN_KEY)")
    secret = bearer_token(authorization, x_api_key)
    if not secret:
        raise Unauthorized("missing admin key")
    if not same_secret(secret, settings.admin_key.get_secret_value()):
        raise Unauthorized("invalid admin key")


TenantDep = Annotated[Tenant, Depends(current_tenant)]
AdminDep = Depends(require_admin)
