"""Presso's user-facing package: the ``presso`` command, a small HTTP client, and ``presso.load(dir)``."""

from presso.client import PressoClient, PressoError
from presso.load import load

__all__ = ["PressoClient", "PressoError", "load"]
