"""The job spec: one set of torch-free models for what a user asks and for one run of it.

``JobSpec`` is the request as the API takes it (``POST /v1/jobs`` body), as the CLI builds it from
its flags (``presso compress`` and ``presso submit`` share them: presso/commands/jobargs.py) and as
the job row stores it. ``LocalJobSpec`` is the same request refined for one run on this machine:
the worker (or the CLI) fetches every URI and refines the spec with ``model_copy(update=...)`` to
local ``file://`` URIs (``JobSpec.localized``), then adds what only the runner decides (output
directory, device, limits). A new option is one field here; nothing copies field lists by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from presso.compression.recipe import (
    MAX_FALLBACKS,
    MAX_TOTAL_STEPS,
    Recipe,
    check_fallback_count,
    check_total_steps,
)
from presso.compression.search.spec import SEARCH_METHODS, TargetSpec

MAX_URI = 2048


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gate(_Strict):
    """Limits the evaluation's measures must meet (docs/search.md, "Evaluation"); unset limits are not checked."""

    max_ppl_increase_pct: float | None = Field(default=None, ge=0, description="Max perplexity increase, %.")
    max_kl: float | None = Field(default=None, ge=0, description="Max mean KL(original || compressed), nats/token.")
    min_top1_agreement: float | None = Field(
        default=None, ge=0, le=1,
        description="Min fraction of evaluation tokens where both models predict the same next token.")
    max_flip_rate: float | None = Field(
        default=None, ge=0, le=1,
        description="Max fraction of multiple-choice questions whose chosen answer changes (needs evaluation.tasks).")
    min_task_accuracy_ratio: float | None = Field(
        default=None, ge=0, le=10,
        description="Min task accuracy after / before, over all questions of evaluation.tasks.")


MAX_TASKS = 4


class TaskSpec(_Strict):
    """A multiple-choice task: a JSONL file, one question a line: {"context": str, "choices": [str, ...],
    "gold": int} (compression/eval/tasks.py)."""

    uri: str = Field(min_length=1, max_length=MAX_URI, description="JSONL task file (s3, https, file).")
    name: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                             description="Name in the metrics (default: task<i>).")
    limit: int = Field(default=200, ge=1, le=5000, description="Questions scored (the first ones of the file).")


class GenerationSpec(_Strict):
    """Greedy-generation agreement: prompts cut from the evaluation windows, continued by both models."""

    prompts: int = Field(default=4, ge=0, le=64, description="Prompts (0: off).")
    prompt_tokens: int = Field(default=32, ge=1, le=1024)
    new_tokens: int = Field(default=16, ge=1, le=512)


class CalibrationSpec(_Strict):
    uri: str | None = Field(default=None, max_length=MAX_URI,
                            description="Text, JSONL ({'text': ...}; for a vision-language model also 'image': "
                            "a data:image/...;base64 URI) or token-id (.npy/.json) file (s3, https, file).")
    samples: int = Field(default=64, ge=1, le=4096)
    seq_len: int = Field(default=512, ge=16, le=32768)
    seed_prompt: str = Field(default="The", min_length=1, max_length=2000,
                             description="Used when no file is given: the model writes its own text.")


class EvaluationSpec(_Strict):
    enabled: bool = True
    uri: str | None = Field(default=None, max_length=MAX_URI,
                            description="Evaluation text (s3, https, file); none -> text the base model generates.")
    windows: int | None = Field(
        default=None, ge=1, le=1024,
        description="Evaluation windows; unset: sized so that the evaluation takes no longer than the compression "
        "(at least 2, at most 8 windows; docs/search.md).")
    seq_len: int = Field(default=512, ge=16, le=32768)
    gate: Gate | None = None
    latency: bool = Field(default=True, description="Measure forward latency before/after.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    tasks: list[TaskSpec] = Field(default_factory=list, max_length=MAX_TASKS,
                                  description=f"Multiple-choice tasks (accuracy, flip rate). At most {MAX_TASKS}.")

    @model_validator(mode="after")
    def _task_limits_need_tasks(self) -> EvaluationSpec:
        g = self.gate
        if g is not None and not self.tasks and (g.max_flip_rate is not None or g.min_task_accuracy_ratio is not None):
            raise ValueError("gate.max_flip_rate and gate.min_task_accuracy_ratio need evaluation.tasks")
        return self


MAX_RANKS = 8  # compression.core.distributed.MAX_SEGMENTS: the most ranks a calibrated step can use


class ResourcesSpec(_Strict):
    gpus: int = Field(
        default=1, ge=1, le=MAX_RANKS,
        description="Ranks the job's compression runs as (torch.distributed: one per GPU with NCCL; on a worker "
        "without CUDA, CPU processes with gloo). GPTQ splits its calibration batches and per-layer solves across "
        "them; other steps run whole on every rank. The artifact is byte-identical to one rank's. Jobs with "
        "gpus > 1 go to the queue gpu-x2, gpu-x4 or gpu-x8 (the next size up), served by workers that have as many.",
    )


class OutputSpec(_Strict):
    format: Literal["compressed", "dense"] = "compressed"
    sparse_format: Literal["dense", "sparse-bitmask"] = Field(
        default="dense", description="Sparse layers: dense (loads everywhere) or compressed-tensors sparse-bitmask "
        "(smaller; presso.load only, plain transformers refuses it).")
    encoding: Literal["lossless"] | None = Field(
        default=None, description="'lossless': PZST-encode the finished artifact's safetensors (exact).")


class JobSpec(_Strict):
    """What a user asks for: the API body, the CLI's flags, the stored request."""

    model_config = ConfigDict(
        extra="forbid", frozen=True,
        json_schema_extra={"examples": [{
            "model_uri": "s3://models/llama-tiny",
            "recipe": {"steps": [{"method": "rtn", "bits": 4, "group_size": 64}]},
            "evaluation": {"windows": 4, "seq_len": 256},
        }]},
    )

    model_uri: str = Field(min_length=1, max_length=MAX_URI, description="s3://, https://, hf:// or file://")
    recipe: Recipe | None = Field(
        default=None,
        description="The steps to apply. Required unless a target is given; with a target, one rtn or gptq step "
        "seeds the search (its settings and its level).",
    )
    target: TargetSpec | None = Field(
        default=None,
        description="A budget and/or quality floor: the worker searches per-layer levels and runs the recipe "
        "it finds (reported as recipe_used and in metrics.search).",
    )
    fallbacks: list[Recipe] = Field(
        default_factory=list, max_length=MAX_FALLBACKS,
        description=f"Tried in order when the gate is missed. At most {MAX_FALLBACKS}; with the recipe, at most "
        f"{MAX_TOTAL_STEPS} steps in all.",
    )
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    streaming: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Compress block by block from the model's shards into the artifact's (docs/streaming.md): "
        "'auto' when the weights exceed the worker's host-memory budget, 'on' whenever the job allows it, 'off' "
        "never. A job that cannot be streamed (evaluation, chains, methods other than rtn/gptq) runs in memory.",
    )

    @field_validator("calibration", "evaluation", "output", "resources", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        return {} if value is None else value  # older stored requests and clients send null

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _fallback_count(cls, fallbacks: Any) -> Any:
        return check_fallback_count(fallbacks)

    @field_validator("fallbacks")
    @classmethod
    def _total_steps(cls, fallbacks: list[Recipe], info: ValidationInfo) -> list[Recipe]:
        return check_total_steps(info.data.get("recipe"), fallbacks)

    @model_validator(mode="after")
    def _recipe_or_target(self) -> JobSpec:
        if self.recipe is None and self.target is None:
            raise ValueError("give a recipe, a target, or both (the recipe then seeds the search)")
        if self.resources.gpus > 1 and self.streaming == "on":
            raise ValueError("streaming with resources.gpus > 1 is not supported: several ranks run in memory "
                             "(docs/distributed.md)")
        if self.target is not None:
            if self.fallbacks:
                raise ValueError("a target job takes no fallbacks: the search chooses the recipe")
            if self.target.has_floor and not self.evaluation.enabled:
                raise ValueError("a target's quality floor needs evaluation enabled")
            if self.target.max_flip_rate is not None and not self.evaluation.tasks:
                raise ValueError("a target's max_flip_rate needs evaluation.tasks")
            if self.recipe is not None:
                steps = self.recipe.steps
                if len(steps) != 1 or steps[0].method not in SEARCH_METHODS or getattr(steps[0], "overrides", None):
                    raise ValueError(f"a recipe beside a target seeds the search: one step of "
                                     f"{' or '.join(SEARCH_METHODS)}, without overrides")
        return self

    def stored(self) -> dict[str, Any]:
        """The request as given (JSON, unset fields left out: a default recipe option stays a default)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def uris(self) -> dict[str, str]:
        """Every user-supplied URI by its field name (what the submit check and the fetch both guard)."""
        found = {"model_uri": self.model_uri}
        if self.calibration.uri:
            found["calibration.uri"] = self.calibration.uri
        if self.evaluation.uri:
            found["evaluation.uri"] = self.evaluation.uri
        for i, task in enumerate(self.evaluation.tasks):
            found[f"evaluation.tasks.{i}.uri"] = task.uri
        return found

    def localized(self, model: Path, calibration: Path | None, evaluation: Path | None,
                  tasks: list[Path] | None = None) -> JobSpec:
        """The same request with every URI replaced by the local file it was fetched to (``tasks``: one path per
        ``evaluation.tasks`` entry, in order; None keeps them)."""
        ev: dict[str, Any] = {"uri": evaluation.as_uri() if evaluation else None}
        if tasks is not None:
            ev["tasks"] = [t.model_copy(update={"uri": p.as_uri()})
                           for t, p in zip(self.evaluation.tasks, tasks, strict=True)]
        return self.model_copy(update={
            "model_uri": model.as_uri(),
            "calibration": self.calibration.model_copy(update={"uri": calibration.as_uri() if calibration else None}),
            "evaluation": self.evaluation.model_copy(update=ev),
        })


def local_path(uri: str) -> Path:
    """``file:///x`` or a bare path -> Path; anything else is not local (ValueError)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        return Path(uri)
    raise ValueError(f"not a local path: {uri!r} (fetch it first)")


class LocalJobSpec(JobSpec):
    """One run on this machine: a ``JobSpec`` whose URIs are local files, plus what the runner decides."""

    out_dir: Path
    device: str | None = Field(default=None, description="'cuda', 'cpu' or None (CUDA when present).")
    seed: int = 0
    max_params: int | None = Field(default=None, description="Refuse models declaring more parameters.")
    checkpoint: bool = Field(
        default=True,
        description="A streamed job checkpoints each finished block to resume_dir (disk: about the artifact's size "
        "until it is published); false: no checkpoint, a killed job starts over.",
    )
    resume_dir: Path | None = Field(
        default=None,
        description="Where a streamed job checkpoints each finished block and resumes from (compression.io.resume); "
        "default: out_dir/.presso-resume, removed when the artifact is published.",
    )
    overwrite: bool = Field(
        default=False,
        description="out_dir may hold a previous Presso artifact (presso.json), whose files are then replaced; "
        "anything else in a non-empty out_dir is refused (compression.io.outdir).",
    )

    @model_validator(mode="after")
    def _inputs_are_local(self) -> LocalJobSpec:
        for field, uri in self.uris().items():
            try:
                local_path(uri)
            except ValueError as exc:
                raise ValueError(f"{field}: {exc}") from None
        return self

    @classmethod
    def for_run(cls, job: JobSpec, *, model: Path, calibration: Path | None = None,
                evaluation: Path | None = None, tasks: list[Path] | None = None, **run: Any) -> LocalJobSpec:
        """Refine a fetched ``job`` for one run; ``run`` holds out_dir, device, seed, max_params, overwrite."""
        refined = job.localized(model, calibration, evaluation, tasks)
        fields = {name: getattr(refined, name) for name in refined.model_fields_set | {"model_uri"}}
        return cls(**fields, **run)

    @property
    def model_dir(self) -> Path:
        return local_path(self.model_uri)

    @property
    def calibration_path(self) -> Path | None:
        return local_path(self.calibration.uri) if self.calibration.uri else None

    @property
    def evaluation_path(self) -> Path | None:
        return local_path(self.evaluation.uri) if self.evaluation.uri else None

    @property
    def task_paths(self) -> list[Path]:
        return [local_path(t.uri) for t in self.evaluation.tasks]
