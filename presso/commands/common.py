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


class RecipeInputError(ValueError):
    """--recipe names no readable file, or holds no JSON object. The message is one line for stderr."""


def load_recipe(text: str, what: str = "recipe") -> dict[str, Any]:
    """A recipe (or another JSON object: ``what``, e.g. "target") given inline as JSON or as a path to a JSON file
    (RecipeInputError when neither works)."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        where, raw = f"--{what}", stripped
    else:
        where = f"{what} file {text}"
        try:
            raw = Path(text).expanduser().read_text()
        except FileNotFoundError:
            raise RecipeInputError(f"{where} does not exist (give a JSON file or inline JSON)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeInputError(f"{where} cannot be read: {exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RecipeInputError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        like = '{"steps": [...]}' if what == "recipe" else '{"bits_per_weight": 3.5}'
        raise RecipeInputError(f"{where}: a {what} is a JSON object like {like}")
    return data


def validation_message(exc: Any, prefix: str = "recipe") -> str:
    """A pydantic ValidationError as one line: its first error, naming the field as the API's 422 does
    (``recipe.steps.0.group_size: ...``)."""
    from presso.compression.configs import CONFIGS

    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    loc = list(first.get("loc", ()))
    # drop the method tags pydantic puts in the path of a discriminated union (steps.0.rtn.bits)
    parts = [*([prefix] if prefix else []),
             *(str(p) for i, p in enumerate(loc)
               if not (isinstance(p, str) and p in CONFIGS and i > 0 and isinstance(loc[i - 1], int)))]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{'.'.join(parts)}: {str(first.get('msg', '')).removeprefix('Value error, ')}{more}"


def as_uri(value: str) -> str:
    """Bare local paths become file:// URIs."""
    if "://" in value:
        return value
    return Path(value).expanduser().resolve().as_uri()
