"""Tenants and their API keys. A key is shown once; only its sha256 is stored."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from presso.app.core.db import Base, UTCDateTime, utcnow


def new_id() -> str:
    return uuid.uuid4().hex


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    webhook_secret: Mapped[str | None] = mapped_column(
        String(64), nullable=True, comment="HMAC-SHA256 key of this tenant's webhook signatures.")
    default_callback_url: Mapped[str | None] = mapped_column(
        Text, nullable=True, comment="callback_url of the tenant's jobs that give none.")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32), comment="First characters of the key, for display.")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, comment="sha256 hex of the full key.")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
