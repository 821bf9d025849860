"""The ``target`` of a job: what it accepts, what it refuses (before any work), and the CLI flag that builds it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from presso.cli import build_parser
from presso.commands.jobargs import describe, job_request
from presso.compression.search.spec import MAX_CANDIDATES, MAX_LEVELS
from presso.compression.spec import JobSpec

TARGET = {"bits_per_weight": 3.5, "space": {"bits": [3, 4], "group_sizes": [64]}}


def _job(**body: Any) -> JobSpec:
    return JobSpec.model_validate({"model_uri": "s3://m/llama", **body})


def test_a_target_alone_is_a_job_and_is_stored_as_given() -> None:
    job = _job(target=TARGET)
    assert job.recipe is None and job.target is not None and job.target.bits_per_weight == 3.5
    assert job.stored() == {"model_uri": "s3://m/llama", "target": TARGET}  # unset defaults stay unset
    assert job.target.space.methods == ["gptq"]


def test_a_recipe_beside_a_target_seeds_it() -> None:
    job = _job(target=TARGET, recipe={"steps": [{"method": "gptq", "bits": 4, "group_size": 64, "damp_percent": 0.05}]})
    assert job.recipe is not None and job.target is not None


@pytest.mark.parametrize(("body", "message"), [
    ({}, "give a recipe, a target, or both"),
    ({"target": {}}, "needs a budget"),
    ({"target": {"bits_per_weight": 3, "max_bytes": 10}}, "one budget"),
    ({"target": {"bits_per_weight": 0.5}}, "greater than 1"),
    ({"target": {"max_kl": 0.1, "space": {"bits": [5]}}}, "Input should be 2, 3, 4 or 8"),
    ({"target": {"max_kl": 0.1, "space": {"bits": [4, 4]}}}, "distinct"),
    ({"target": {"max_kl": 0.1, "space": {"methods": ["awq"]}}}, "'rtn' or 'gptq'"),
    ({"target": {"max_kl": 0.1, "space": {"group_sizes": [0]}}}, "group_size must be -1"),
    ({"target": {"max_kl": 0.1, "space": {"methods": ["rtn", "gptq"], "bits": [2, 3, 4, 8],
                                         "group_sizes": [32, 64, 128]}}}, f"at most {MAX_LEVELS}"),
    ({"target": {"max_kl": 0.1, "candidates": MAX_CANDIDATES + 1}}, f"less than or equal to {MAX_CANDIDATES}"),
    ({"target": {"max_kl": 0.1, "generations": 10**6}}, "less than or equal to"),
    ({"target": {"max_kl": 0.1, "space": {"targets": ["re:("]}}}, "bad regular expression"),
    ({"target": {"max_kl": 0.1}, "evaluation": {"enabled": False}}, "needs evaluation"),
    ({"target": TARGET, "recipe": {"steps": [{"method": "rtn"}]}, "fallbacks": [{"steps": [{"method": "rtn"}]}]},
     "no fallbacks"),
    ({"target": TARGET, "recipe": {"steps": [{"method": "awq"}]}}, "seeds the search"),
    ({"target": TARGET, "recipe": {"steps": [{"method": "gptq", "overrides": [{"pattern": "q_proj", "bits": 8}]}]}},
     "without overrides"),
])
def test_bad_targets_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        _job(**body)


def test_cli_target_flag_builds_the_same_request() -> None:
    for command, extra in (("compress", ["--out", "/tmp/x"]), ("submit", [])):
        args = build_parser().parse_args([command, "s3://m/llama", "--target", json.dumps(TARGET), *extra])
        body = job_request(args)
        assert body == {"model_uri": "s3://m/llama", "target": TARGET}
        assert JobSpec.model_validate(body).target is not None


def test_cli_target_from_a_file_and_errors(tmp_path: Any) -> None:
    path = tmp_path / "target.json"
    path.write_text(json.dumps(TARGET))
    args = build_parser().parse_args(["submit", "s3://m/llama", "--target", str(path), "--recipe",
                                      '{"steps": [{"method": "gptq", "bits": 4}]}'])
    assert job_request(args)["target"] == TARGET
    bad = build_parser().parse_args(["submit", "s3://m/llama", "--target", '{"bits_per_weight": 3, "max_bytes": 1}'])
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(job_request(bad))
    assert describe(info.value).startswith("invalid target: target: give one budget")
    neither = build_parser().parse_args(["submit", "s3://m/llama"])
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(job_request(neither))
    assert describe(info.value).startswith("invalid request: give a recipe, a target, or both")
