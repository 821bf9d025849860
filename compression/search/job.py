"""A target job's search, as ``run_local`` runs it: measure, knapsack, evolve, then full attempts of the best few.

1. The space's levels (plus a seed recipe's own level) for every searched Linear, with their stored bits and
   artifact bytes; a budget below the cheapest allocation fails at once (``target_unreachable``).
2. ``measure``: quantized weights and block-output sensitivities of every (layer, level), block-wise.
3. With a budget: the knapsack's allocation (least summed sensitivity within the budget), refined by the
   evolutionary search with the KL fitness; the ``candidates`` best allocations by fitness are written as
   recipes and run as normal attempts (compress + evaluate + gate); the best one that meets the floor wins.
   Without a budget (a floor alone): the knapsack's Pareto front, bisected with full attempts for the
   smallest allocation that meets the floor.
4. No allocation meets the floor: ``TargetUnreachable`` naming the best reached.

Progress: stage ``search:<phase> ...`` with the fitness evaluations and the best fitness so far in the stage
text (the job's GET shows them), then ``search:candidate i/k`` before each full attempt.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from presso.compression.configs.quantization import GPTQConfig, RTNConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout, select_linears
from presso.compression.errors import TargetUnreachable, UnsupportedModel
from presso.compression.eval.size import dense_bytes
from presso.compression.io.loading import LoadedModel
from presso.compression.pipeline import preflight
from presso.compression.recipe import Recipe
from presso.compression.search import evolve as evo
from presso.compression.search import knapsack
from presso.compression.search.allocation import Level, allocation_recipe, space_levels
from presso.compression.search.fitness import KLFitness, fitness_windows
from presso.compression.search.measure import (
    TENSOR_HEADER_BYTES,
    SearchLayer,
    block_linear_weights,
    measure,
    search_layers,
)
from presso.compression.search.spec import FLOORS
from presso.compression.spec import Gate, LocalJobSpec

log = logging.getLogger(__name__)

AttemptFn = Callable[[Recipe, Gate | None], tuple[nn.Module, dict[str, Any]]]
FRONT_POINTS = 12
REPORTED = ("ppl_increase_pct", "kl", "ppl_after", "top1_agreement", "generation_agreement", "flip_rate")
MAX_REPORTED_POINTS = 64
_STEP_FIELDS = {"method", "bits", "group_size", "overrides", "targets", "ignore"}


@dataclass
class SearchResult:
    recipe: Recipe
    model: nn.Module
    attempt: dict[str, Any]
    attempts: list[dict[str, Any]]
    metrics: dict[str, Any]


@dataclass
class Costs:
    """The budget's unit and each allocation's size in bits per weight and bytes."""

    unit: str  # "bits" or "bytes"
    capacity: int | None  # for the searched layers, in ``unit``; None: no budget
    fixed_bits: int  # stored bits of the block linears not searched
    n_weights: int  # weights of every block linear
    fixed_bytes: int  # artifact bytes of everything not searched
    layers: list[SearchLayer]

    def table(self) -> list[list[int]]:
        return [layer.bits if self.unit == "bits" else layer.bytes for layer in self.layers]

    def bits_per_weight(self, alloc: tuple[int, ...] | list[int]) -> float:
        return (self.fixed_bits + sum(layer.bits[j] for layer, j in zip(self.layers, alloc, strict=True))) / \
            self.n_weights

    def nbytes(self, alloc: tuple[int, ...] | list[int]) -> int:
        return self.fixed_bytes + sum(layer.bytes[j] for layer, j in zip(self.layers, alloc, strict=True))


def merged_gate(spec: LocalJobSpec) -> Gate | None:
    """The evaluation gate with the target's floor: each limit the stricter of the two."""
    t, g = spec.target, spec.evaluation.gate
    assert t is not None

    def tighter(a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else min(a, b)

    def looser(a: float | None, b: float | None) -> float | None:  # of two minimums, the higher is the stricter
        return b if a is None else a if b is None else max(a, b)

    limits = {
        "max_ppl_increase_pct": tighter(t.max_ppl_increase_pct, g.max_ppl_increase_pct if g else None),
        "max_kl": tighter(t.max_kl, g.max_kl if g else None),
        "min_top1_agreement": looser(t.min_top1_agreement, g.min_top1_agreement if g else None),
        "max_flip_rate": tighter(t.max_flip_rate, g.max_flip_rate if g else None),
        "min_task_accuracy_ratio": g.min_task_accuracy_ratio if g else None,
    }
    return Gate(**limits) if any(v is not None for v in limits.values()) else None


def _options(method: str, seed: Any, symmetric: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options written into the recipe: only what was given; every option's value for the measurement)."""
    given: dict[str, Any] = {"symmetric": symmetric} if not symmetric else {}
    if seed is not None and seed.method == method:
        given.update({k: v for k, v in seed.model_dump(exclude_unset=True).items() if k not in _STEP_FIELDS})
    cls = GPTQConfig if method == "gptq" else RTNConfig
    full = cls.model_validate(given).model_dump(exclude=_STEP_FIELDS)
    return given, full


def _costs(spec: LocalJobSpec, model: nn.Module, layout: Any, layers: list[SearchLayer]) -> Costs:
    t = spec.target
    assert t is not None
    n_all, dense_all = block_linear_weights(layout)
    fixed_bits = dense_all - sum(layer.dense_bits for layer in layers)
    fixed_bytes = dense_bytes(model) - sum(layer.dense_bytes - TENSOR_HEADER_BYTES for layer in layers)
    fixed_bytes += TENSOR_HEADER_BYTES * sum(1 for _ in model.state_dict())  # header entries of the rest
    if t.bits_per_weight is not None:
        return Costs("bits", math.floor(t.bits_per_weight * n_all) - fixed_bits, fixed_bits, n_all, fixed_bytes,
                     layers)
    if t.max_bytes is not None:
        return Costs("bytes", t.max_bytes - fixed_bytes, fixed_bits, n_all, fixed_bytes, layers)
    return Costs("bits", None, fixed_bits, n_all, fixed_bytes, layers)


def _quality_key(attempt: dict[str, Any]) -> float:
    q = attempt.get("quality") or {}
    for k in ("ppl_after", "kl"):
        if q.get(k) is not None:
            return float(q[k])
    return math.inf


def _reached(attempt: dict[str, Any], costs: Costs, alloc: tuple[int, ...]) -> str:
    q = attempt.get("quality") or {}
    parts = []
    if q.get("ppl_increase_pct") is not None:
        parts.append(f"perplexity +{q['ppl_increase_pct']:.2f}%")
    if q.get("kl") is not None:
        parts.append(f"KL {q['kl']:.4f}")
    if q.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {q['top1_agreement']:.4f}")
    if q.get("flip_rate") is not None:
        parts.append(f"flip rate {q['flip_rate']:.4f}")
    return f"{', '.join(parts) or 'no measure'} at {costs.bits_per_weight(alloc):.3f} bits/weight " \
        f"({costs.nbytes(alloc)} bytes)"


def _pareto(points: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Non-dominated points (fewer bits, lower ``key``), bits ascending."""
    out: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda p: (p["bits_per_weight"], p[key])):
        if not out or p[key] < out[-1][key]:
            out.append(p)
    return out[:MAX_REPORTED_POINTS]


def calibrate(errors: list[list[float]], costs: list[list[int]], score: Callable[[tuple[int, ...]], float],
              on_step: Callable[[float], None] | None = None,
              blocks: list[int] | None = None) -> list[list[float]]:
    """Scale each layer's sensitivities so that they predict the end-to-end KL: with every other layer at its
    dearest level, the layer at its median-error level is scored by the fitness; the KL it adds over the
    all-dearest allocation, divided by its block-output error there, scales all its levels. A block's output
    error says how much a layer disturbs the residual stream, not how much later blocks amplify it; one fitness
    evaluation per layer measures that. Factors are floored at 5% of the median (a noisy zero would make a
    layer look free).

    ``blocks`` (each layer's block): one evaluation per block instead, every layer of the block at its median
    level together; the block's added KL over the sum of those errors scales all of them (what later blocks do
    to a disturbance depends on where it enters more than on which linear made it)."""
    def dearest_of(c: list[int], e: list[float]) -> int:  # the dearest level; of equal ones the least error
        return max(range(len(c)), key=lambda j: (c[j], -e[j]))

    dearest = tuple(dearest_of(c, e) for c, e in zip(costs, errors, strict=True))
    mids = [sorted(range(len(errs)), key=errs.__getitem__)[len(errs) // 2] for errs in errors]
    units = [[k] for k in range(len(errors))] if blocks is None else \
        [[k for k, b in enumerate(blocks) if b == block] for block in dict.fromkeys(blocks)]
    base = score(dearest)
    factors: list[float | None] = [None] * len(errors)
    for n, unit in enumerate(units):
        moved = {k for k in unit if errors[k][mids[k]] > 0 and mids[k] != dearest[k]}
        if moved:
            alloc = tuple(mids[k] if k in moved else j for k, j in enumerate(dearest))
            factor = max(score(alloc) - base, 0.0) / sum(errors[k][mids[k]] for k in moved)
            for k in moved:
                factors[k] = factor
        if on_step is not None:
            on_step((n + 1) / len(units))
    known = sorted(f for f in factors if f is not None and f > 0)
    if not known:
        return errors
    floor = 0.05 * known[len(known) // 2]
    return [[e * max(f if f is not None else known[len(known) // 2], floor) for e in errs]
            for errs, f in zip(errors, factors, strict=True)]


def run_search(spec: LocalJobSpec, lm: LoadedModel, ctx: StepContext, attempt: AttemptFn) -> SearchResult:
    target = spec.target
    assert target is not None
    if lm.kind != "causal_lm":
        raise UnsupportedModel("a target search needs a causal language model (its fitness is the KL of the logits)")
    model = lm.model
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    seed = spec.recipe.steps[0] if spec.recipe is not None else None
    space = target.space
    seed_level = Level(seed.method, seed.bits, seed.group_size) if seed is not None else None  # type: ignore[attr-defined]
    levels = space_levels(space.methods, space.bits, space.group_sizes, seed_level)
    symmetric = bool(seed.symmetric) if seed is not None else space.symmetric  # type: ignore[attr-defined]
    targets, ignore = (seed.targets, seed.ignore) if seed is not None else (space.targets, space.ignore)
    methods = sorted({lv.method for lv in levels})
    given, full = {}, {}
    for method in methods:
        given[method], full[method] = _options(method, seed, symmetric)
    layout = find_layout(model)
    chosen = select_linears(model, layout, list(targets), list(ignore))
    layers = search_layers(chosen, levels, symmetric)
    costs = _costs(spec, model, layout, layers)
    table_costs = costs.table()
    cheapest = tuple(min(range(len(c)), key=c.__getitem__) for c in table_costs)
    if costs.capacity is not None and sum(c[j] for c, j in zip(table_costs, cheapest, strict=True)) > costs.capacity:
        raise TargetUnreachable(
            f"the budget is below the smallest allocation of the search space ({costs.bits_per_weight(cheapest):.3f} "
            f"bits/weight, {costs.nbytes(cheapest)} bytes: every layer at {levels[0].label} or cheaper)",
            details={"smallest_bits_per_weight": costs.bits_per_weight(cheapest),
                     "smallest_bytes": costs.nbytes(cheapest)})

    def names(alloc: tuple[int, ...]) -> dict[str, Level]:
        return {layer.name: layer.levels[j] for layer, j in zip(layers, alloc, strict=True)}

    def recipe_of(alloc: tuple[int, ...]) -> Recipe:
        return allocation_recipe(names(alloc), given, targets, ignore)

    # 1. sensitivities, block-wise
    ctx.stage = "search:sensitivity"
    ctx.report(0.0)
    assert ctx.calibration is not None
    rounding = full if target.sensitivity_rounding == "recipe" else \
        {m: {**o, "observer": "minmax", "static_groups": True} for m, o in full.items()}
    table = measure(model, layout, layers, ctx, samples=target.fitness_samples, options=rounding,
                    symmetric=symmetric, store=ctx.device)
    errors = table.errors
    times["measure"] = table.seconds
    t = time.perf_counter()
    vocab = int(getattr(model.config, "vocab_size", 0) or 1)
    fit = KLFitness(model, table, fitness_windows(ctx.calibration, target.fitness_samples, vocab), ctx.device,
                    batch_size=min(ctx.batch_size, 4))
    explored: dict[tuple[int, ...], float] = {}

    def score(alloc: tuple[int, ...]) -> float:
        if alloc not in explored:
            explored[alloc] = fit(alloc)
        return explored[alloc]

    def show(phase: str, fraction: float) -> None:
        best = min(explored.values()) if explored else None
        text = f"search:{phase} {fit.evaluated} evaluated" + (f", best KL {best:.4g}" if best is not None else "")
        ctx.progress(text[:64], fraction)
        if ctx.should_stop():
            from presso.compression.core.context import Cancelled

            raise Cancelled("job cancelled")

    seed_alloc: tuple[int, ...] | None = None
    if seed_level is not None:
        seed_alloc = tuple(layer.levels.index(seed_level.for_layer(layer.in_features)) for layer in layers)
    try:
        # 2. each layer's block-output error on the scale of the end-to-end KL
        blocks = [layer.block for layer in layers] if target.sensitivity_scale == "block" else None
        errors = calibrate(errors, table_costs, score, lambda f: show("calibrate", f), blocks)
        # 3. the knapsack's front (the (bits, KL) points of the report, and a floor-only job's candidates)
        front_points = knapsack.front(table_costs, errors, points=FRONT_POINTS)
        front: list[tuple[int, ...]] = []
        for n, (cost, _err, levels_of) in enumerate(front_points):
            if costs.capacity is None or cost <= costs.capacity:
                front.append(tuple(levels_of))
                score(tuple(levels_of))
            show("front", (n + 1) / len(front_points))
        if costs.capacity is not None:
            start = tuple(knapsack.solve(table_costs, errors, costs.capacity))
            starts = [seed_alloc] if seed_alloc is not None else []
            ev = evo.evolve(start, table_costs, costs.capacity, score, generations=target.generations,
                            offspring=target.offspring, seed=spec.seed, extra_starts=starts,
                            on_generation=lambda g, _e: show("evolve", g / max(target.generations, 1)))
            ranked = [a for a, _ in ev.top(target.candidates)]
            knapsack_alloc = start
        else:
            ranked, knapsack_alloc = [], None
    finally:
        fit.close()
    times["search"] = time.perf_counter() - t
    evaluations = fit.evaluated

    # 3. full attempts
    t = time.perf_counter()
    gate = merged_gate(spec)
    attempts: list[dict[str, Any]] = []
    best: tuple[nn.Module, dict[str, Any], tuple[int, ...]] | None = None

    def run(alloc: tuple[int, ...], i: int, k: int) -> tuple[nn.Module, dict[str, Any]]:
        recipe = recipe_of(alloc)
        preflight(model, recipe)
        ctx.progress(f"search:candidate {i}/{k}", (i - 1) / k)
        m, att = attempt(recipe, gate)
        att["index"] = len(attempts)
        att["search"] = {"bits_per_weight": costs.bits_per_weight(alloc), "bytes_estimate": costs.nbytes(alloc),
                         "fitness_kl": explored.get(alloc)}
        attempts.append(att)
        return m, att

    def better(att: dict[str, Any], than: dict[str, Any] | None) -> bool:
        if than is None:
            return True
        if att["passed"] != than["passed"]:
            return bool(att["passed"])
        return _quality_key(att) < _quality_key(than)

    if costs.capacity is not None:
        k = len(ranked) if spec.evaluation.enabled else 1
        for i, alloc in enumerate(ranked[:k]):
            mod, att = run(alloc, i + 1, k)
            if best is None or better(att, best[1]):
                best = (mod, att, alloc)
            else:
                del mod
    else:  # a floor alone: bisect the front for the smallest allocation that meets it
        lo, hi = 0, len(front) - 1
        i = next((n for n, a in enumerate(front) if target.max_kl is not None and explored[a] <= target.max_kl),
                 (lo + hi) // 2)
        smallest_pass: tuple[nn.Module, dict[str, Any], tuple[int, ...]] | None = None
        for n in range(target.candidates):
            mod, att = run(front[i], n + 1, target.candidates)
            if att["passed"]:
                smallest_pass, hi = (mod, att, front[i]), i - 1
            else:
                if best is None or better(att, best[1]):
                    best = (mod, att, front[i])
                lo = i + 1
            if lo > hi:
                break
            i = (lo + hi) // 2
        if smallest_pass is not None:
            best = smallest_pass
    times["evaluate"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    assert best is not None
    model_out, chosen_attempt, alloc = best

    counts: dict[str, int] = {}
    for lv in names(alloc).values():
        counts[lv.label] = counts.get(lv.label, 0) + 1
    points = [{"bits_per_weight": costs.bits_per_weight(a), "kl": v} for a, v in explored.items()]
    metrics: dict[str, Any] = {
        "levels": [lv.label for lv in levels],
        "layers": len(layers),
        "budget": {k: getattr(target, k) for k in ("bits_per_weight", "max_bytes") if getattr(target, k) is not None},
        "floor": {k: getattr(target, k) for k in FLOORS if getattr(target, k) is not None},
        "fitness_evaluations": evaluations,
        "candidates_evaluated": len(attempts),
        "best": {"bits_per_weight": costs.bits_per_weight(alloc), "bytes_estimate": costs.nbytes(alloc),
                 "fitness_kl": explored.get(alloc), **{k: chosen_attempt["quality"].get(k) for k in REPORTED}},
        "allocation": counts,
        "knapsack": ({"bits_per_weight": costs.bits_per_weight(knapsack_alloc),
                      "fitness_kl": explored.get(knapsack_alloc)} if knapsack_alloc is not None else None),
        "seed": ({"bits_per_weight": costs.bits_per_weight(seed_alloc), "fitness_kl": explored.get(seed_alloc)}
                 if seed_alloc is not None else None),
        "front": _pareto(points, "kl"),
        "candidates": [{**a["search"], **{k: a["quality"].get(k) for k in REPORTED if k != "ppl_after"},
                        "passed": a["passed"]} for a in attempts],
        "seconds": times,
    }
    if not chosen_attempt["passed"]:
        budget = ", ".join(f"{k} {v}" for k, v in metrics["budget"].items()) or "no budget"
        raise TargetUnreachable(
            f"no allocation met the floor ({'; '.join(chosen_attempt['gate_failures'])}) under {budget}: best "
            f"reached {_reached(chosen_attempt, costs, alloc)} after {len(attempts)} candidates",
            details={"search": metrics})
    log.info("search: %s in %.1fs", counts, times["total"])
    return SearchResult(recipe=Recipe.model_validate(chosen_attempt["recipe"]), model=model_out,
                        attempt=chosen_attempt, attempts=attempts, metrics=metrics)
