"""The job spec: one model for the request, refined for a run without copying fields by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from presso.compression.spec import JobSpec, LocalJobSpec

REQUEST = {"model_uri": "s3://m/llama", "recipe": {"steps": [{"method": "rtn", "bits": 4}]},
           "calibration": {"uri": "https://x/valid.txt", "samples": 8},
           "evaluation": {"uri": "s3://d/test.txt", "windows": 3, "gate": {"max_kl": 0.1}},
           "output": {"format": "dense", "encoding": "lossless"}}


def test_for_run_keeps_every_option_and_localizes_every_uri(tmp_path: Path) -> None:
    job = JobSpec.model_validate(REQUEST)
    spec = LocalJobSpec.for_run(job, model=tmp_path / "model", calibration=tmp_path / "c.txt",
                                evaluation=tmp_path / "e.txt", out_dir=tmp_path / "out", device="cpu")
    assert spec.model_dir == tmp_path / "model"
    assert (spec.calibration_path, spec.evaluation_path) == (tmp_path / "c.txt", tmp_path / "e.txt")
    assert spec.calibration.samples == 8 and spec.evaluation.windows == 3
    assert spec.evaluation.gate is not None and spec.evaluation.gate.max_kl == 0.1
    assert spec.output == job.output
    # a default recipe option stays a default (the worker falls back per channel only for defaults)
    assert "group_size" not in spec.recipe.steps[0].model_fields_set


def test_a_run_refuses_remote_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="calibration.uri: not a local path"):
        LocalJobSpec.model_validate({**REQUEST, "model_uri": str(tmp_path), "out_dir": str(tmp_path),
                                     "evaluation": {}})


def test_older_stored_requests_with_nulls_still_parse() -> None:
    job = JobSpec.model_validate({**REQUEST, "calibration": None, "evaluation": None, "output": None})
    assert job.calibration.samples == 64 and job.evaluation.enabled and job.output.format == "compressed"


SERVICE_ONLY = {"name", "labels", "metadata", "callback_url", "force"}  # the job record's, not the compression's


def test_api_fields_are_the_spec_fields() -> None:
    """The API body is the library's JobSpec plus only the service's own record fields (docs/architecture.md):
    every compression option is defined once, in JobSpec."""
    from presso.app.jobs.schemas import JobCreate

    assert issubclass(JobCreate, JobSpec)
    assert JobCreate.model_fields.keys() - JobSpec.model_fields.keys() == SERVICE_ONLY
    assert JobSpec.model_fields.keys() <= JobCreate.model_fields.keys()
    assert not {"out_dir", "device", "max_params", "overwrite"} & JobCreate.model_fields.keys()
