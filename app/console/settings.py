"""Console settings (environment, prefix ``PRESSO_CONSOLE_``) and the session-signing secrets.

``PRESSO_CONSOLE_SECRETS``: comma-separated secrets; the first signs new session cookies, every one is
accepted when checking a cookie, so a secret is rotated by putting the new one first, and dropped a
session lifetime later (cookies still signed with it are re-signed with the first on their next request).
Unset: one secret is generated into ``DATA_DIR/console-secret`` (mode 0600) on first start and shared by
every API process that sees that directory; set the variable when the API processes do not share one.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)
SECRET_FILE = "console-secret"
MIN_SECRET_CHARS = 32


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRESSO_CONSOLE_", extra="ignore")

    secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Session-signing secrets, newest first (comma-separated).")
    session_ttl_s: int = Field(default=12 * 3600, ge=60, le=30 * 24 * 3600, description="Session lifetime.")
    cookie_secure: Literal["auto", "always", "never"] = Field(
        default="auto", description="Secure cookie flag: auto = when the request came over https "
                                    "(uvicorn's proxy headers included).")
    poll_interval_s: float = Field(default=2.0, gt=0, description="Live progress refresh of running jobs.")

    @field_validator("secrets", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("secrets")
    @classmethod
    def _long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        for s in value:
            if len(s.get_secret_value()) < MIN_SECRET_CHARS:
                raise ValueError(f"each console secret needs at least {MIN_SECRET_CHARS} characters")
        return value


def signing_secrets(console: ConsoleSettings, data_dir: Path) -> list[bytes]:
    """The configured secrets, else the one in DATA_DIR/console-secret (created once, atomically)."""
    if console.secrets:
        return [s.get_secret_value().encode() for s in console.secrets]
    path = data_dir / SECRET_FILE
    try:
        return [_read_or_create(path)]
    except OSError as exc:
        log.warning("console: cannot keep a session secret in %s (%s); using one for this process only: "
                    "set PRESSO_CONSOLE_SECRETS when several API processes serve the console", path, exc)
        return [secrets.token_urlsafe(48).encode()]


def _read_or_create(path: Path) -> bytes:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)  # atomic create-if-absent: concurrent API processes end up with one secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_CHARS:
        raise OSError(f"{path} holds no usable secret")
    return value.encode()
