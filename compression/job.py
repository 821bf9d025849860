"""run_local(spec): load -> calibrate -> compress -> evaluate -> gate -> write. What workers and the CLI call.

Nothing here touches the network, the database or the queue: the caller has already fetched
every input into local paths, and uploads what ``out_dir`` holds afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from presso.compression.core.calibrows import CalibrationExtras
from presso.compression.core.context import StepContext, pick_device
from presso.compression.errors import AccuracyGateFailed, CalibrationError, CodecError, CompressionError
from presso.compression.eval.exact import bit_exactness
from presso.compression.eval.report import gate_verdict, size_metrics
from presso.compression.eval.session import EvalSession, lossless_only
from presso.compression.io.artifact import encode, write_model, write_presso_json
from presso.compression.io.calibration import generate_windows, load_windows
from presso.compression.io.formats import artifact_loaders
from presso.compression.io.imagecalib import image_text_windows, load_processor
from presso.compression.io.imagefile import has_images
from presso.compression.io.loading import LoadedModel, load_model, vocab_size
from presso.compression.io.outdir import check_out_dir, publish, staged_output
from presso.compression.multirank import RankFailed, RankGroup
from presso.compression.pipeline import compress, preflight
from presso.compression.recipe import Recipe
from presso.compression.registry import engine_for
from presso.compression.spec import Gate, LocalJobSpec
from presso.compression.streamjob import run_streaming, stream_decision
from presso.compression.version import presso_version

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, float], None]


@dataclass
class LocalJobResult:
    metrics: dict[str, Any]
    files: list[Path]
    attempts: list[dict[str, Any]] = field(default_factory=list)


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def _calibration(spec: LocalJobSpec, lm: LoadedModel, device: torch.device, needed: bool,
                 progress: ProgressFn) -> tuple[torch.Tensor | None, CalibrationExtras | None]:
    c = spec.calibration
    if not needed:
        return None, None
    progress("calibration-data", 0.0)
    vocab = vocab_size(lm.model.config)
    path = spec.calibration_path
    if path is not None and has_images(path):  # image+text JSONL: the VLM's processor makes the rows
        processor = load_processor(spec.model_dir) if getattr(lm.model.config, "vision_config", None) else None
        if processor is None:
            raise CalibrationError(f"{path.name} has images, but the model is not a vision-language model with a "
                                   "processor (processor_config.json / preprocessor_config.json): give text only")
        if spec.resources.gpus > 1:
            raise CalibrationError("image+text calibration runs on one rank: set resources.gpus to 1")
        return image_text_windows(path, processor, lm.model.config, c.samples, c.seq_len, vocab)
    if path is not None:
        return load_windows(path, lm.tokenizer, c.samples, c.seq_len, vocab), None
    return generate_windows(lm.model, lm.tokenizer, c.samples, c.seq_len, seed=spec.seed, prompt=c.seed_prompt,
                            device=device, progress=lambda f: progress("calibration-data", f)), None


def _calibration_metrics(spec: LocalJobSpec, calib: torch.Tensor | None,
                         extras: CalibrationExtras | None) -> dict[str, Any]:
    if calib is None:
        return {}
    return {"calibration": {"samples": int(calib.shape[0]), "seq_len": int(calib.shape[1]),
                            "samples_with_images": extras.with_images if extras is not None else 0,
                            "source": "file" if spec.calibration_path is not None else "generated"}}


def _attempt(recipe: Recipe, lm: LoadedModel, original: torch.nn.Module, ctx: StepContext,
             evals: EvalSession, spec: LocalJobSpec,
             gate: Gate | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    model = copy.deepcopy(original)
    if ctx.announce is not None:  # the other ranks compress their copy with this recipe too
        ctx.announce(recipe)
    after_step = None
    exact_only = lossless_only(recipe)
    t_c = time.perf_counter()
    if evals.enabled and len(recipe.steps) > 1 and not exact_only:
        # each step's own effect: quality after every step of a chain (latency only at the end)
        def after_step(_i: int, m: torch.nn.Module) -> dict[str, Any]:
            return evals.measure(original, m, time.perf_counter() - t_c, latency=False, stage=None)

    report = compress(model, recipe, ctx, after_step=after_step)
    if exact_only:  # the weights are unchanged: bit-exactness is checked on the written artifact (_write)
        quality: dict[str, Any] = {}
        verdict: dict[str, Any] = {"passed": True, "gate_failures": []}
    else:
        ctx.progress("evaluate", 0.0)
        quality = evals.measure(original, model, float(report["seconds"]), latency=spec.evaluation.latency)
        verdict = gate_verdict(quality, gate if gate is not None else spec.evaluation.gate)
    return model, {"recipe": recipe.model_dump(mode="json"), "report": report, "quality": quality, **verdict}


def run_local(spec: LocalJobSpec, *, progress: ProgressFn | None = None,
              should_stop: Callable[[], bool] | None = None,
              on_checkpoint: Callable[[Path], None] | None = None,
              on_shard: Callable[[Path], None] | None = None) -> LocalJobResult:
    """``on_checkpoint(dir)``: called after each block a streamed job checkpoints (compression.io.resume)."""
    t0 = time.perf_counter()
    progress = progress or (lambda s, f: None)
    device = pick_device(spec.device)
    recipes = [spec.recipe, *spec.fallbacks] if spec.recipe is not None else []  # a target job may have none
    check_out_dir(spec.out_dir, overwrite=spec.overwrite)  # a refused output directory, too
    for r in recipes:  # a missing engine fails before the hour of work
        for s in r.steps:
            engine_for(s)
    world = spec.resources.gpus
    decision = stream_decision(spec) if world == 1 else None  # block by block from the shards (compression.streamjob)
    if decision is not None and decision.stream:
        log.info("streaming the model block by block: %s", decision.reason)
        return run_streaming(spec, progress=progress, should_stop=should_stop,  # type: ignore[no-any-return]
                             on_saved=on_checkpoint, on_shard=on_shard)
    group = RankGroup(spec, world) if world > 1 else None  # the other ranks load the model meanwhile
    try:
        result = _run_in_memory(spec, recipes, group, device, progress, should_stop, t0)
    except BaseException as exc:
        if group is not None:
            why = group.failure()
            group.close(ok=False)
            if why is not None and not isinstance(exc, CompressionError):
                raise RankFailed(why) from exc
        raise
    if group is not None:
        group.close()
        result.metrics["ranks"] = world  # in the job's metrics, not in the artifact (the same bytes as one rank)
    return result


def _run_in_memory(spec: LocalJobSpec, recipes: list[Recipe], group: RankGroup | None, device: torch.device,
                   progress: ProgressFn, should_stop: Callable[[], bool] | None, t0: float) -> LocalJobResult:
    progress("load", 0.0)
    lm = load_model(spec.model_dir, max_params=spec.max_params)
    for r in recipes:  # what needs the model's shapes fails now too, not after calibration or another attempt
        preflight(lm.model, r)
    timings: dict[str, float] = {"load": time.perf_counter() - t0}
    t = time.perf_counter()
    calib, calib_extras = _calibration(spec, lm, device,
                                       spec.target is not None or any(r.needs_calibration for r in recipes), progress)
    evals = EvalSession(spec, lm, device, progress)  # its data on first use, sized by the first compression
    timings["data"] = time.perf_counter() - t
    ctx = StepContext(calibration=calib, calibration_extras=calib_extras, device=device, progress=progress,
                      seed=spec.seed)
    if group is not None:
        group.share_calibration(calib)
        ctx.dist, ctx.announce = group.ranks, group.announce
    if should_stop is not None:
        ctx.should_stop = should_stop
    attempts: list[dict[str, Any]] = []
    chosen = None
    extra: dict[str, Any] = _calibration_metrics(spec, calib, calib_extras)
    if spec.target is not None:  # the search chooses the recipe; its candidates are the attempts
        from presso.compression.search.job import run_search

        t = time.perf_counter()

        def target_attempt(recipe: Recipe, gate: Gate | None) -> tuple[torch.nn.Module, dict[str, Any]]:
            ctx.originals = {}
            t_a = time.perf_counter()
            model, attempt = _attempt(recipe, lm, lm.model, ctx, evals, spec, gate)
            attempt["seconds"] = time.perf_counter() - t_a
            return model, attempt

        # the search measures on rank 0 alone; its candidates (target_attempt) run on every rank
        found = run_search(spec, lm, dataclasses.replace(ctx, dist=None, announce=None), target_attempt)
        timings["search"] = time.perf_counter() - t
        attempts, extra["search"] = found.attempts, found.metrics
        chosen = (found.recipe, found.model, found.attempt)
        recipes = []
    for i, recipe in enumerate(recipes):
        ctx.originals = {}
        t = time.perf_counter()
        model, attempt = _attempt(recipe, lm, lm.model, ctx, evals, spec)
        attempt["seconds"] = time.perf_counter() - t
        attempt["index"] = i
        attempts.append(attempt)
        if attempt["passed"]:
            chosen = (recipe, model, attempt)
            break
        log.info("attempt %d missed the gate: %s", i, attempt["gate_failures"])
        del model
    if chosen is None:
        last = attempts[-1]
        raise AccuracyGateFailed(
            f"no recipe passed the accuracy gate: {'; '.join(last['gate_failures'])}",
            details={"attempts": [_slim(a) for a in attempts]},
        )
    recipe, model, attempt = chosen
    if evals.seconds:
        timings["evaluate"] = evals.seconds  # every attempt's evaluation, its data included
    progress("write", 0.0)
    with staged_output(spec.out_dir, overwrite=spec.overwrite) as stage:
        metrics = _write(spec, stage, recipe, model, lm, attempt, attempts, timings, t0, device, extra)
        files = publish(stage, spec.out_dir, overwrite=spec.overwrite)
    progress("write", 1.0)
    return LocalJobResult(metrics=metrics, files=[Path(f) for f in files], attempts=metrics["attempts"])


def _write(spec: LocalJobSpec, out_dir: Path, recipe: Recipe, model: torch.nn.Module, lm: LoadedModel,
           attempt: dict[str, Any], attempts: list[dict[str, Any]], timings: dict[str, float], t0: float,
           device: torch.device, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The artifact, report.json and presso.json into ``out_dir`` (a staging directory); returns the metrics."""
    t = time.perf_counter()
    forms = write_model(model, lm.tokenizer, out_dir, spec.output.format, sparse_format=spec.output.sparse_format,
                        source_dir=spec.model_dir if spec.model_dir.is_dir() else spec.model_dir.parent)
    output: dict[str, Any] = {"sparse_format": spec.output.sparse_format, "forms": forms, **artifact_loaders(out_dir)}
    encoding = output_encoding(spec, recipe)
    post = {name: encode(out_dir, name, **opts) for name, opts in encoding.items()}
    exact: dict[str, Any] = {}
    exact_seconds = 0.0
    if lossless_only(recipe):  # instead of perplexity: the decoded weights are the original's, bit for bit
        t_x = time.perf_counter()
        exact = bit_exactness(lm.model, out_dir)
        exact_seconds = time.perf_counter() - t_x
        timings["evaluate"] = timings.get("evaluate", 0.0) + exact_seconds
        if not exact["bit_exact"]:
            raise CodecError("the lossless artifact does not decode to the original weights "
                             f"(sha256 {exact['decoded_weights_sha256'][:16]} != {exact['weights_sha256'][:16]})",
                             details=exact)
    output["encoding"] = next(iter(encoding), None)
    timings["write"] = time.perf_counter() - t - exact_seconds
    timings["total"] = time.perf_counter() - t0
    metrics = {
        **size_metrics(lm.model, model, out_dir),
        **attempt["quality"],
        **exact,
        "timings": {**timings, "compress": attempt["report"]["seconds"]},
        "steps": [{k: v for k, v in s.items() if k != "layers"} for s in attempt["report"]["steps"]],
        "attempts": [_slim(a) for a in attempts],
        "recipe_used": attempt["recipe"],
        "device": str(device),
        "source_format": lm.source_format,
        "load_notes": lm.notes,
        **post,
        **(extra or {}),
    }
    layers = [layer for s in attempt["report"]["steps"] for layer in s.get("layers", [])]
    import json

    (out_dir / "report.json").write_text(json.dumps({"layers": layers, "steps": metrics["steps"]}, indent=2,
                                                     default=str))
    write_presso_json(out_dir, {"presso_version": presso_version(), "recipe": attempt["recipe"],
                                "metrics": metrics, "versions": _versions(), "output_format": spec.output.format,
                                **output})
    return metrics


def _slim(attempt: dict[str, Any]) -> dict[str, Any]:
    return {k: attempt[k] for k in ("index", "recipe", "quality", "passed", "gate_failures", "seconds") if k in attempt}


def output_encoding(spec: LocalJobSpec, recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The encoding of the written artifact, with its options: ``spec.output.encoding``, or the recipe's last
    step ``lossless`` (still accepted; its ``chunk_bytes`` is used)."""
    from presso.compression.configs.lossless import LosslessConfig

    last = recipe.steps[-1]
    if isinstance(last, LosslessConfig):
        return {"lossless": {"chunk_bytes": last.chunk_bytes}}
    return {spec.output.encoding: {}} if spec.output.encoding else {}
