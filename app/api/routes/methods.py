"""/v1/methods: every compression method with the JSON schema of its parameters."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter

from presso.compression.recipe import methods_catalog

router = APIRouter(prefix="/v1/methods", tags=["methods"])


@lru_cache(maxsize=1)
def _catalog() -> list[dict[str, Any]]:
    return methods_catalog()


@router.get("")
def list_methods() -> dict[str, Any]:
    return {"data": _catalog()}
