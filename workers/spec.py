"""Fetch a job's inputs into its temp dir and build the library's LocalJobSpec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from presso.app.core.settings import Settings
from presso.compression.errors import InvalidRecipe
from presso.compression.recipe import parse_recipe
from presso.compression.spec import CalibrationInput, EvaluationInput, LocalJobSpec
from presso.workers.lease import Claim


def fetch_limits(settings: Settings) -> Any:
    from presso.workers.fetch.limits import FetchLimits

    return FetchLimits.from_settings(
        settings,
        allow_private_hosts=tuple(settings.fetch_allow_private_hosts),
        allow_http=settings.fetch_allow_http,
    )


def build_spec(
    claim: Claim, settings: Settings, tmp: Path, *, progress: Callable[[str, float], None]
) -> LocalJobSpec:
    from presso.workers.fetch import fetch_file, fetch_model

    req = claim.request
    try:  # before the fetch: a recipe that cannot run costs no download
        recipe = parse_recipe(req["recipe"])
        fallbacks = [parse_recipe(r) for r in req.get("fallbacks", [])]
    except ValidationError as exc:
        raise _invalid(exc) from exc
    limits = fetch_limits(settings)
    progress("fetch", 0.0)
    model_dir = fetch_model(claim.model_uri, tmp / "model", limits)
    progress("fetch", 0.5)
    calib_req: dict[str, Any] = req.get("calibration") or {}
    eval_req: dict[str, Any] = req.get("evaluation") or {}
    calib_path = fetch_file(calib_req["uri"], tmp / "calibration", limits) if calib_req.get("uri") else None
    eval_path = fetch_file(eval_req["uri"], tmp / "evaluation", limits) if eval_req.get("uri") else None
    progress("fetch", 1.0)
    calibration = CalibrationInput(
        path=calib_path, **{k: v for k, v in calib_req.items() if k in ("samples", "seq_len")}
    )
    evaluation = EvaluationInput(
        path=eval_path,
        **{k: v for k, v in eval_req.items() if k in ("enabled", "windows", "seq_len", "gate", "latency")},
    )
    out_dir = tmp / "out"
    out_dir.mkdir()
    try:
        return LocalJobSpec(
            model_dir=model_dir, out_dir=out_dir, recipe=recipe, fallbacks=fallbacks,
            calibration=calibration, evaluation=evaluation,
            output_format=(req.get("output") or {}).get("format", "compressed"),
            sparse_format=(req.get("output") or {}).get("sparse_format", "dense"),
            output_encoding=(req.get("output") or {}).get("encoding"),
            device=settings.device, max_params=settings.max_model_params,
        )
    except ValidationError as exc:
        raise _invalid(exc) from exc


def _invalid(exc: ValidationError) -> InvalidRecipe:
    """A request stored under older, looser rules: the user's input at fault, so a failed job, never a retry."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return InvalidRecipe(f"the stored recipe is not valid now: {where}: {first.get('msg')}")
