"""Presso's user-facing package: the ``presso`` command and a small HTTP client."""

from presso.client import PressoClient, PressoError

__all__ = ["PressoClient", "PressoError"]
