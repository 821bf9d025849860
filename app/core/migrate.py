"""Run Alembic migrations programmatically (`presso migrate`, `presso serve`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from presso.app.core.settings import Settings


def migrations_dir() -> Path:
    """``presso.migrations``: ``presso/migrations`` in a wheel, ``migrations/`` at the root of a checkout;
    either way two levels above ``app/core/`` (this file)."""
    candidate = Path(__file__).resolve().parents[2] / "migrations"
    if not (candidate / "env.py").is_file():
        raise FileNotFoundError(f"presso.migrations is missing from this installation ({candidate})")
    return candidate


def alembic_config(url: str) -> Config:
    cfg = Config()  # everything alembic.ini says is set here, so an installed wheel needs no ini file
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = url
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings.resolved_database_url), revision)
