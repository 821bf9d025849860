"""`presso compress` and `presso submit` take the same job options and build the same JobSpec the API takes."""

from __future__ import annotations

import json

from presso.app.jobs.schemas import JobCreate
from presso.cli import build_parser
from presso.commands.remote import build_body
from presso.compression.spec import JobSpec

RECIPE = json.dumps({"steps": [{"method": "gptq", "bits": 4}]})
FALLBACK = json.dumps({"steps": [{"method": "gptq", "bits": 8}]})
FLAGS = ["--recipe", RECIPE, "--fallback", FALLBACK, "--calib", "s3://d/valid.txt", "--samples", "16",
         "--seq-len", "256", "--seed-prompt", "Hello", "--eval", "s3://d/test.txt", "--windows", "4",
         "--gate-ppl", "5", "--gate-kl", "0.05", "--no-latency", "--format", "dense",
         "--sparse-format", "sparse-bitmask", "--encoding", "lossless"]


def _job_options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {o for a in sub.choices[command]._actions for o in a.option_strings}  # type: ignore[attr-defined]


def test_compress_and_submit_share_every_job_option() -> None:
    compress, submit = _job_options("compress"), _job_options("submit")
    job_flags = {f for f in FLAGS if f.startswith("--")} | {"--no-eval", "--eval-seq-len", "--eval-windows"}
    assert job_flags <= compress and job_flags <= submit
    assert compress - submit == {"--out", "--overwrite", "--device"}  # what only a local run decides


def test_submit_body_is_the_api_body_with_every_option() -> None:
    args = build_parser().parse_args(["submit", "s3://m/llama", *FLAGS])
    body = build_body(args)
    job = JobCreate.model_validate(body)  # the API's own validation
    assert isinstance(job, JobSpec)
    assert [s.bits for s in job.fallbacks[0].steps] == [8]
    assert job.calibration.model_dump(exclude={"uri"}) == {"samples": 16, "seq_len": 256, "seed_prompt": "Hello"}
    assert (job.evaluation.windows, job.evaluation.seq_len, job.evaluation.latency) == (4, 256, False)
    assert job.evaluation.gate is not None and job.evaluation.gate.max_ppl_increase_pct == 5
    assert job.output.model_dump() == {"format": "dense", "sparse_format": "sparse-bitmask", "encoding": "lossless"}
    assert job.uris() == {"model_uri": "s3://m/llama", "calibration.uri": "s3://d/valid.txt",
                          "evaluation.uri": "s3://d/test.txt"}


def test_unset_options_stay_unset_in_the_stored_request() -> None:
    args = build_parser().parse_args(["submit", "s3://m/llama", "--recipe", RECIPE, "--no-eval"])
    body = build_body(args)
    assert body == {"model_uri": "s3://m/llama", "recipe": {"steps": [{"method": "gptq", "bits": 4}]},
                    "evaluation": {"enabled": False}}
    assert JobSpec.model_validate(body).stored() == body
