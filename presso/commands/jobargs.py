"""The job options `presso compress` and `presso submit` share, and the ``JobSpec`` they build.

One function adds the flags and one builds the spec (presso.compression.spec), so both commands take
the same options and a new option of the spec is added here once. Only flags the user gave enter the
spec (as the API stores a request: a default stays a default).
"""

from __future__ import annotations

import argparse
from typing import Any

from presso.commands.common import as_uri, load_recipe


def add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_uri", help="s3://, https://, hf://, file:// or a local path (becomes file://)")
    p.add_argument("--recipe", help="recipe JSON inline or a file (required unless --target is given)")
    p.add_argument("--target", help="target JSON inline or a file: a budget (bits_per_weight, max_bytes) and/or a "
                   "floor (max_ppl_increase_pct, max_kl, min_top1_agreement, max_flip_rate); the worker searches "
                   "per-layer levels (a --recipe beside it seeds the search)")
    p.add_argument("--fallback", action="append", default=[], metavar="RECIPE",
                   help="a recipe tried when the gate is missed (JSON or a file; repeat for several, in order)")
    c = p.add_argument_group("calibration")
    c.add_argument("--calib", help="calibration text (file://, s3://, https:// or a path)")
    c.add_argument("--samples", type=int, help="calibration windows (default 64)")
    c.add_argument("--seq-len", type=int, help="calibration and evaluation window length (default 512)")
    c.add_argument("--seed-prompt", help="prompt the model writes its own calibration text from (no --calib)")
    e = p.add_argument_group("evaluation and gate")
    e.add_argument("--eval", dest="eval_uri", help="evaluation text (file://, s3://, https:// or a path)")
    e.add_argument("--windows", "--eval-windows", dest="windows", type=int,
                   help="evaluation windows (default: 2 to 8, as many as fit in the compression's time)")
    e.add_argument("--eval-seq-len", type=int, help="evaluation window length (default: --seq-len)")
    e.add_argument("--no-eval", action="store_true", help="skip evaluation (and the gate)")
    e.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    e.add_argument("--gate-ppl", type=float, metavar="PCT",
                   help="fail (or fall back) above this perplexity increase, %%")
    e.add_argument("--gate-kl", type=float, metavar="NATS", help="fail (or fall back) above this mean KL, nats/token")
    e.add_argument("--gate-top1", type=float, metavar="FRAC",
                   help="fail (or fall back) below this top-1 token agreement with the original (0..1)")
    e.add_argument("--gate-flip-rate", type=float, metavar="FRAC",
                   help="fail (or fall back) above this answer-flip rate on the --task files (0..1)")
    e.add_argument("--task", action="append", default=[], metavar="URI",
                   help="multiple-choice task, JSONL lines {context, choices, gold} (repeat for several): accuracy "
                   "before/after and flip rate (docs/search.md)")
    o = p.add_argument_group("output")
    o.add_argument("--format", choices=["compressed", "dense"], help="compressed (default) or dense weights")
    o.add_argument("--sparse-format", choices=["dense", "sparse-bitmask"],
                   help="sparse layers: dense (default; loads everywhere) or sparse-bitmask (smaller; presso.load)")
    o.add_argument("--encoding", choices=["lossless"], help="lossless: PZST-encode the artifact's safetensors")
    p.add_argument("--streaming", choices=["auto", "on", "off"],
                   help="compress block by block from the model's shards (docs/streaming.md); default auto: when the "
                   "weights exceed the host-memory budget")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="run the compression as N ranks with torch.distributed (one per GPU; CPU processes with gloo "
                   "where there is no CUDA); GPTQ splits its work across them, the artifact is the same bytes")


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def job_request(args: argparse.Namespace) -> dict[str, Any]:
    """The request as JSON from the flags (RecipeInputError for an unreadable recipe)."""
    body: dict[str, Any] = {"model_uri": as_uri(args.model_uri)}
    if args.recipe is not None:
        body["recipe"] = load_recipe(args.recipe)
    if getattr(args, "target", None) is not None:
        body["target"] = load_recipe(args.target, what="target")
    if args.fallback:
        body["fallbacks"] = [load_recipe(r) for r in args.fallback]
    calibration = _given(uri=as_uri(args.calib) if args.calib else None, samples=args.samples,
                         seq_len=args.seq_len, seed_prompt=args.seed_prompt)
    gate = _given(max_ppl_increase_pct=args.gate_ppl, max_kl=args.gate_kl,
                  min_top1_agreement=getattr(args, "gate_top1", None),
                  max_flip_rate=getattr(args, "gate_flip_rate", None))
    tasks = [{"uri": as_uri(t)} for t in getattr(args, "task", None) or []]
    evaluation = _given(uri=as_uri(args.eval_uri) if args.eval_uri else None, windows=args.windows,
                        tasks=tasks or None,
                        seq_len=args.eval_seq_len or args.seq_len, gate=gate or None,
                        enabled=False if args.no_eval else None, latency=False if args.no_latency else None)
    output = _given(format=args.format, sparse_format=args.sparse_format, encoding=args.encoding)
    if getattr(args, "streaming", None) is not None:
        body["streaming"] = args.streaming
    if getattr(args, "gpus", None) is not None:
        body["resources"] = {"gpus": args.gpus}
    for name, part in (("calibration", calibration), ("evaluation", evaluation), ("output", output)):
        if part:
            body[name] = part
    return body


def job_spec(args: argparse.Namespace) -> Any:
    """The validated ``JobSpec`` (pydantic ValidationError or RecipeInputError on bad input)."""
    from presso.compression.spec import JobSpec

    return JobSpec.model_validate(job_request(args))


def describe(exc: Any) -> str:
    """A ValidationError of the job spec as one line: ``invalid recipe: recipe.steps.0.bits: ...`` or
    ``invalid option evaluation.windows: ...``."""
    from presso.commands.common import validation_message

    errors = exc.errors()
    where = str(errors[0]["loc"][0]) if errors and errors[0].get("loc") else ""
    if not where:  # the request as a whole (e.g. neither a recipe nor a target)
        return f"invalid request: {str(errors[0].get('msg', exc)).removeprefix('Value error, ')}"
    kind = "recipe" if where in ("recipe", "fallbacks") else "target" if where == "target" else "option"
    return f"invalid {kind}: {validation_message(exc, prefix='')}"
