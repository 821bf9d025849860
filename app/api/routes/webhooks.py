"""/v1/webhooks/secret: the tenant's webhook signing key (presso.client.webhooks describes the signature)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from presso.app.api.deps import SessionDep, TenantDep
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
