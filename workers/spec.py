"""Fetch a job's inputs into its temp dir and build the library's LocalJobSpec."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from presso.app.core.settings import Settings
from presso.compression.errors import InvalidRecipe
from presso.compression.spec import JobSpec, LocalJobSpec
from presso.workers.lease import Claim

log = logging.getLogger(__name__)


def fetch_limits(settings: Settings) -> Any:
    from presso.fetch.limits import FetchLimits

    return FetchLimits.from_settings(
        settings,
        allow_private_hosts=tuple(settings.fetch_allow_private_hosts),
        allow_http=settings.fetch_allow_http,
    )


def model_cache(settings: Settings) -> Any:
    """The worker's model cache (shared by its processes and jobs), or None when off (docs/model-cache.md)."""
    if settings.model_cache_dir is None or settings.model_cache_gb <= 0:
        return None
    from presso.fetch.cache import ModelCache

    return ModelCache(settings.model_cache_dir, int(settings.model_cache_gb * 2**30),
                      verify=settings.model_cache_verify)


def build_spec(
    claim: Claim, settings: Settings, tmp: Path, *, progress: Callable[[str, float], None]
) -> LocalJobSpec:
    """The stored request as a ``JobSpec`` (validated before any fetch: a recipe that cannot run costs no
    download), its URIs fetched into ``tmp``, refined into this run's ``LocalJobSpec``."""
    from presso.fetch.api import fetch_file, fetch_model_report

    try:
        job = JobSpec.model_validate({**claim.request, "model_uri": claim.model_uri})
    except ValidationError as exc:
        raise _invalid(exc) from exc
    limits = fetch_limits(settings)
    progress("fetch", 0.0)
    fetched = fetch_model_report(job.model_uri, tmp / "model", limits, model_cache(settings))
    model_dir = fetched.path
    if fetched.cache:
        log.info("model %s: model cache %s", job.model_uri, fetched.cache)
    progress("fetch:cache hit" if fetched.cache == "hit" else "fetch", 0.5)
    calibration = fetch_file(job.calibration.uri, tmp / "calibration", limits) if job.calibration.uri else None
    evaluation = fetch_file(job.evaluation.uri, tmp / "evaluation", limits) if job.evaluation.uri else None
    tasks = [fetch_file(t.uri, tmp / f"task{i}", limits) for i, t in enumerate(job.evaluation.tasks)]
    progress("fetch", 1.0)
    out_dir = tmp / "out"
    out_dir.mkdir()
    return LocalJobSpec.for_run(job, model=model_dir, calibration=calibration, evaluation=evaluation, tasks=tasks,
                                out_dir=out_dir, device=settings.device, max_params=settings.max_model_params)


def _invalid(exc: ValidationError) -> InvalidRecipe:
    """A request stored under older, looser rules: the user's input at fault, so a failed job, never a retry."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return InvalidRecipe(f"the stored recipe is not valid now: {where}: {first.get('msg')}")
