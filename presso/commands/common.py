"""Helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def help_formatter() -> type[argparse.HelpFormatter]:
    return argparse.RawDescriptionHelpFormatter


def set_env(name: str, value: object | None) -> None:
    """CLI options win over the environment; settings read PRESSO_* when first built."""
    if value is not None:
        os.environ[f"PRESSO_{name.upper()}"] = str(value)
    from presso.app.core.settings import get_settings

    get_settings.cache_clear()


def load_recipe(text: str) -> dict[str, Any]:
    """A recipe given inline as JSON or as a path to a JSON file."""
    stripped = text.strip()
    if stripped.startswith("{"):
        data = json.loads(stripped)
    else:
        data = json.loads(Path(text).read_text())
    if not isinstance(data, dict):
        raise SystemExit("recipe must be a JSON object like {\"steps\": [...]}")
    return data


def as_uri(value: str) -> str:
    """Bare local paths become file:// URIs."""
    if "://" in value:
        return value
    return Path(value).expanduser().resolve().as_uri()
