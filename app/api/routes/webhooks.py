"""/v1/webhooks: the tenant's signing key (presso.client.webhooks describes the signature) and its default
callback URL (for jobs that give none)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from presso.app.api.deps import SessionDep, SettingsDep, TenantDep
from presso.app.jobs.service import check_callback
from presso.app.tenants.service import webhook_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str = Field(description="HMAC-SHA256 key: Presso-Signature is "
                        "v1=hex(HMAC(secret, timestamp + '.' + body)).")


@router.get("/secret", response_model=WebhookSecret)
def get_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecret:
    """This tenant's webhook signing key (created on first use)."""
    return WebhookSecret(secret=webhook_secret(session, tenant.id))


@router.post("/secret", response_model=WebhookSecret)
def rotate_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecret:
    """Replace the signing key; deliveries from now on are signed with the new one."""
    return WebhookSecret(secret=webhook_secret(session, tenant.id, rotate=True))


class DefaultCallback(BaseModel):
    url: str | None = Field(default=None, max_length=2048,
                            description="https:// URL for the tenant's jobs that give no callback_url; null: none.")


@router.get("/default", response_model=DefaultCallback)
def get_default(tenant: TenantDep) -> DefaultCallback:
    return DefaultCallback(url=tenant.default_callback_url)


@router.put("/default", response_model=DefaultCallback)
def put_default(body: DefaultCallback, session: SessionDep, tenant: TenantDep,
                settings: SettingsDep) -> DefaultCallback:
    """Set (or clear, with null) the default callback URL; it passes the same SSRF guard as a job's."""
    if body.url is not None:
        check_callback(body.url, settings, field="url")
    tenant.default_callback_url = body.url
    session.commit()
    return DefaultCallback(url=tenant.default_callback_url)
