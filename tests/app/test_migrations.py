"""Alembic: migrations match the models (Postgres) and run on SQLite (embedded default)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, inspect

from presso.app.core.migrate import alembic_config, upgrade
from presso.app.core.settings import Settings


def test_models_match_migrations(pg_url: str) -> None:
    command.check(alembic_config(pg_url))  # raises when autogenerate would emit operations


def test_sqlite_upgrade_and_downgrade(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings)
    engine = create_engine(settings.resolved_database_url)
    assert {"tenants", "api_keys", "jobs"} <= set(inspect(engine).get_table_names())
    command.downgrade(alembic_config(settings.resolved_database_url), "base")
    assert "jobs" not in inspect(engine).get_table_names()
    engine.dispose()
