"""Presso's version, from the installed distribution's metadata (one source of truth: pyproject.toml)."""

from __future__ import annotations

import importlib.metadata


def presso_version() -> str:
    try:
        return importlib.metadata.version("presso")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown (not installed)"
