"""Admin API schemas."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[\w.\-]+$")
    max_active_jobs: int | None = Field(default=None, ge=1)


class TenantPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    max_active_jobs: int | None
    created_at: dt.datetime


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=200)


class KeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class KeyCreated(KeyPublic):
    secret: str = Field(description="The API key. Shown once; store it now.")
