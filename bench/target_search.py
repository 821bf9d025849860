"""Target search on SmolLM2-135M (issue 23; BENCHMARKS.md §6): a searched per-layer allocation vs uniform GPTQ.

Protocol of §1 (bench/common.py): the dense float32 SmolLM2-135M, calibration 64 x 512 tokens from the start of
wikitext-2 valid, perplexity on the first 40 x 512 tokens of wikitext-2 test with the product's harness. For each
row:

1. uniform GPTQ at the row's reference settings (e.g. W3 g64) and at the next level up (W4 g64): compression
   seconds, test perplexity, artifact bytes (``write_model``), bits per weight;
2. the product's search (``presso.compression.search.job.run_search``) with ``max_bytes`` = the reference
   artifact's weight bytes: sensitivities, KL-calibration, knapsack, evolution, then the best candidates
   compressed for real and compared on 8 *held-out* windows of wikitext-2 valid (the 8 windows after the
   calibration windows; the test windows are never used to choose); the winner's test perplexity and bytes;
3. the share of the uniform gap the search closes, ``(ppl_ref - ppl_search) / (ppl_ref - ppl_up)``, and the search
   cost against one uniform GPTQ run (the reference's compression seconds, measured warm).

Writes <out>/target_search.json and target_search.md. Examples:
  PYTHONPATH=. .venv/bin/python bench/target_search.py --out /tmp/ts                       # CPU (slow)
  PRESSO_BENCH_DEVICE=cuda PRESSO_BENCH_GGUF=/tmp/persist/smol.gguf PRESSO_BENCH_DATA=<dir> \\
      python3 bench/target_search.py --out $OUT --rows w3g64,w4g128                      # the H200 run
  ... --rows '' --floor-ppl 5 --candidates 8                                             # the 5% floor row
  ... --smoke                                                                            # plumbing only
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `compression` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    DATA,
    DEVICE,
    dense_model_dir,
    dir_bytes,
    machine_info,
    perplexity,
    setup_logging,
    token_windows,
)

log = logging.getLogger("bench.target_search")
Q = {"ignore": ["lm_head"]}

# name -> (reference recipe step, the uniform step one level up, search space); the budget is the reference's bytes
ROWS: dict[str, dict[str, Any]] = {
    "w3g64": {"label": "at the bytes of GPTQ W3 g64",
              "ref": {"method": "gptq", "bits": 3, "group_size": 64, **Q},
              "up": {"method": "gptq", "bits": 4, "group_size": 64, **Q},
              "space": {"methods": ["gptq"], "bits": [2, 3, 4, 8], "group_sizes": [64, 128]}},
    "w4g128": {"label": "at the bytes of GPTQ W4 g128",
               "ref": {"method": "gptq", "bits": 4, "group_size": 128, **Q},
               "up": {"method": "gptq", "bits": 4, "group_size": 64, **Q},
               "space": {"methods": ["gptq"], "bits": [2, 3, 4, 8], "group_sizes": [64, 128]}},
}


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _artifact(model: torch.nn.Module, tokenizer: Any, source: Path) -> dict[str, Any]:
    from presso.compression.eval.size import weight_stats
    from presso.compression.io.artifact import write_model

    with tempfile.TemporaryDirectory(prefix="presso-ts-") as tmp:
        write_model(model, tokenizer, Path(tmp), "compressed", source_dir=source)
        size = dir_bytes(Path(tmp))
    return {"bytes": size["weights_bytes"], "bits_per_weight": weight_stats(model).get("bits_per_weight")}


def uniform(dense: torch.nn.Module, tokenizer: Any, step: dict[str, Any], calib: torch.Tensor,
            evals: torch.Tensor, source: Path) -> dict[str, Any]:
    from presso.compression.core.context import StepContext
    from presso.compression.pipeline import compress
    from presso.compression.recipe import Recipe

    model = copy.deepcopy(dense)
    _sync()
    t0 = time.perf_counter()
    compress(model, Recipe.model_validate({"steps": [step]}), StepContext(calibration=calib, device=DEVICE))
    _sync()
    seconds = time.perf_counter() - t0
    out = {"recipe": step, "seconds": seconds, "ppl": perplexity(model, evals), **_artifact(model, tokenizer, source)}
    log.info("uniform %s: ppl %.2f, %d bytes, %.3f bits/weight, %.1fs", step, out["ppl"], out["bytes"],
             out["bits_per_weight"], seconds)
    return out


def searched(lm: Any, budget_bytes: int | None, space: dict[str, Any], calib: torch.Tensor, select: torch.Tensor,
             evals: torch.Tensor, source: Path, args: argparse.Namespace,
             floor_pct: float | None = None) -> dict[str, Any]:
    from presso.compression.core.context import StepContext
    from presso.compression.eval.report import evaluate, gate_verdict
    from presso.compression.pipeline import compress
    from presso.compression.search.job import run_search
    from presso.compression.spec import LocalJobSpec

    target: dict[str, Any] = {"space": space, "generations": args.generations, "offspring": args.offspring,
                              "fitness_samples": args.fitness_samples, "candidates": args.candidates,
                              "sensitivity_scale": args.sensitivity_scale,
                              "sensitivity_rounding": args.sensitivity_rounding}
    if budget_bytes is not None:
        target["max_bytes"] = budget_bytes
    if floor_pct is not None:  # judged on the held-out selection windows, like the choice among candidates
        target["max_ppl_increase_pct"] = floor_pct
    with tempfile.TemporaryDirectory(prefix="presso-ts-spec-") as tmp:
        spec = LocalJobSpec.model_validate({
            "model_uri": str(source), "out_dir": tmp, "device": str(DEVICE), "target": target,
            "calibration": {"samples": calib.shape[0], "seq_len": calib.shape[1]},
            "evaluation": {"windows": select.shape[0], "seq_len": select.shape[1], "latency": False}})
    stages: list[str] = []

    def progress(stage: str, fraction: float) -> None:
        if not stages or stages[-1].split(" ")[0] != stage.split(" ")[0]:
            log.info("%s %.2f", stage, fraction)
        stages.append(stage)

    ctx = StepContext(calibration=calib, device=DEVICE, progress=progress, seed=0)

    def attempt(recipe: Any, gate: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
        model = copy.deepcopy(lm.model)
        t = time.perf_counter()
        report = compress(model, recipe, ctx)
        quality = evaluate(lm.model, model, "causal_lm", select, DEVICE, latency=False)
        return model, {"recipe": recipe.model_dump(mode="json"), "report": report, "quality": quality,
                       "seconds": time.perf_counter() - t, **gate_verdict(quality, gate)}

    _sync()
    t0 = time.perf_counter()
    result = run_search(spec, lm, ctx, attempt)
    _sync()
    wall = time.perf_counter() - t0
    m = result.metrics
    out = {"target": target, "wall_seconds": wall, "seconds": m["seconds"], "recipe": result.attempt["recipe"],
           "ppl": perplexity(result.model, evals), **_artifact(result.model, lm.tokenizer, source),
           "search": {k: m[k] for k in ("levels", "layers", "fitness_evaluations", "candidates_evaluated", "best",
                                       "allocation", "knapsack", "front", "candidates")},
           "selection_ppl": result.attempt["quality"].get("ppl_after")}
    out["selection_quality"] = {k: result.attempt["quality"].get(k)
                                for k in ("ppl_increase_pct", "kl", "top1_agreement", "eval_windows")}
    log.info("search: ppl %.2f, %d bytes (budget %s), %.3f bits/weight, %.1fs (%s)", out["ppl"], out["bytes"],
             budget_bytes, out["bits_per_weight"], wall, m["allocation"])
    return out


UNIFORM_GRID = [(b, g) for b in (2, 3, 4, 8) for g in (64, 128)]  # the uniform GPTQ recipes a floor row compares


def floor_row(lm: Any, pct: float, space: dict[str, Any], calib: torch.Tensor, select: torch.Tensor,
              evals: torch.Tensor, source: Path, args: argparse.Namespace, dense_ppl: float,
              grid: list[tuple[int, int]]) -> dict[str, Any]:
    """``max_ppl_increase_pct: pct`` alone: the smallest artifact the search finds (the floor judged on the held-out
    selection windows) vs the smallest uniform GPTQ recipe of ``grid`` whose *test* perplexity meets it."""
    uniforms = []
    for bits, group in grid:
        u = uniform(lm.model, lm.tokenizer, {"method": "gptq", "bits": bits, "group_size": group, **Q}, calib,
                    evals, source)
        u["ppl_increase_pct"] = 100.0 * (u["ppl"] / dense_ppl - 1.0)
        uniforms.append(u)
    meeting = [u for u in uniforms if u["ppl_increase_pct"] <= pct]
    smallest = min(meeting, key=lambda u: u["bytes"]) if meeting else None
    s = searched(lm, None, space, calib, select, evals, source, args, floor_pct=pct)
    s["ppl_increase_pct"] = 100.0 * (s["ppl"] / dense_ppl - 1.0)
    return {"floor_pct": pct, "uniform": uniforms, "smallest_uniform": smallest, "searched": s,
            "meets_on_test": s["ppl_increase_pct"] <= pct,
            "bytes_vs_smallest_uniform": s["bytes"] / smallest["bytes"] if smallest else None}


def _md_floor(f: dict[str, Any]) -> list[str]:
    s, u = f["searched"], f["smallest_uniform"]
    lines = ["", f"## max_ppl_increase_pct: {f['floor_pct']:g}", "",
             "| recipe | test ppl | increase % | artifact weight bytes | bits/weight | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in f["uniform"]:
        mark = " (smallest meeting the floor)" if u is not None and r is u else ""
        lines.append(f"| uniform GPTQ W{r['recipe']['bits']} g{r['recipe']['group_size']}{mark} | {r['ppl']:.2f} | "
                     f"{r['ppl_increase_pct']:+.2f} | {r['bytes']} | {r['bits_per_weight']:.3f} | {r['seconds']:.1f} |")
    sec = s["seconds"]
    lines.append(f"| **searched** ({s['search']['allocation']}) | **{s['ppl']:.2f}** | {s['ppl_increase_pct']:+.2f} | "
                 f"**{s['bytes']}** | {s['bits_per_weight']:.3f} | {s['wall_seconds']:.1f} "
                 f"(measure {sec['measure']:.1f}, search {sec['search']:.1f}, candidates {sec['evaluate']:.1f}) |")
    ratio = f["bytes_vs_smallest_uniform"]
    lines += ["", f"searched / smallest uniform meeting the floor: {ratio:.3f} of the bytes" if ratio else
              "no uniform recipe of the grid meets the floor on test",
              f"floor met on test: {f['meets_on_test']} (the search judged it on the held-out selection windows: "
              f"{s['selection_quality']})"]
    return lines


def _md(results: dict[str, Any]) -> str:
    lines = ["# Target search (SmolLM2-135M, bench/target_search.py)", "",
             f"Device: {results['machine']['device']}; command: `{results['command']}`", "",
             "| row | uniform ref ppl | uniform up ppl | searched ppl | gap closed | bytes (ref / searched) | "
             "bits/weight (ref / searched) | search s (measure + calibrate/evolve) | candidates s | ref GPTQ s | "
             "cost / one GPTQ run |", "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---|"]
    for name, r in results["rows"].items():
        ref, up, s = r["ref"], r["up"], r["searched"]
        sec = s["seconds"]
        search_s = sec["measure"] + sec["search"]
        lines.append(
            f"| {ROWS[name]['label']} | {ref['ppl']:.2f} | {up['ppl']:.2f} | **{s['ppl']:.2f}** | "
            f"{100 * r['gap_closed']:.0f}% | {ref['bytes']} / {s['bytes']} | {ref['bits_per_weight']:.3f} / "
            f"{s['bits_per_weight']:.3f} | {search_s:.1f} ({sec['measure']:.1f} + {sec['search']:.1f}) | "
            f"{sec['evaluate']:.1f} | {ref['seconds']:.1f} | {search_s / ref['seconds']:.1f}x (with candidates "
            f"{(search_s + sec['evaluate']) / ref['seconds']:.1f}x) |")
    lines.append("")
    for name, r in results["rows"].items():
        lines.append(f"{name}: allocation {r['searched']['search']['allocation']}; "
                     f"{r['searched']['search']['fitness_evaluations']} fitness evaluations")
    if results.get("floor"):
        lines += _md_floor(results["floor"])
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: the (bits, fitness KL) front each search explored, its choice starred; right: test perplexity vs
    artifact bytes of the uniform rows and the searched ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    points: dict[str, dict[str, Any]] = {}
    for name, row in results["rows"].items():
        s = row["searched"]["search"]
        front = [p for p in s["front"] if p["bits_per_weight"] < 5]  # the per-layer calibration points: ~8.4 bits
        line = a.plot([p["bits_per_weight"] for p in front], [p["kl"] for p in front], "o-", ms=4,
                      label=f"front explored (budget {name})")
        a.plot([s["best"]["bits_per_weight"]], [s["best"]["fitness_kl"]], "*", ms=14, color=line[0].get_color())
        ref = row["ref"]["recipe"]
        points[f"uniform {ref['bits']}b g{ref['group_size']}"] = row["ref"]
        points["uniform 4b g64"] = row["up"]
        points[f"searched ({name} bytes)"] = row["searched"]
    a.set_yscale("log")
    a.set_xlabel("bits per weight (block linears, scales included)")
    a.set_ylabel("KL on the fitness windows")
    a.set_title("Pareto front explored (fitness KL), stars: chosen")
    a.legend(fontsize=8)
    for label, p in points.items():
        star = label.startswith("searched")
        b.plot(p["bytes"] / 1e6, p["ppl"], "*" if star else "o", ms=12 if star else 8, label=f"{label}: {p['ppl']:.2f}")
    b.axhline(results["dense_ppl"], color="gray", ls=":", label=f"dense {results['dense_ppl']:.2f}")
    b.set_xlabel("artifact weights, MB")
    b.set_ylabel("wikitext-2 test perplexity (40x512)")
    b.set_yscale("log")
    b.set_title(f"SmolLM2-135M, {results['machine']['device']}")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--rows", default="w3g64", help=f"comma-separated, of {', '.join(ROWS)}")
    p.add_argument("--generations", type=int, default=40)
    p.add_argument("--offspring", type=int, default=8)
    p.add_argument("--fitness-samples", type=int, default=8)
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--sensitivity-rounding", choices=["recipe", "fast"], default="recipe",
                   help="the target's sensitivity_rounding: GPTQ levels measured as the recipe rounds them, or "
                   "with min-max ranges and static groups")
    p.add_argument("--sensitivity-scale", choices=["layer", "block"], default="layer",
                   help="the target's sensitivity_scale: one fitness evaluation per linear or per block")
    p.add_argument("--floor-ppl", type=float, metavar="PCT",
                   help="also the floor row: target max_ppl_increase_pct PCT alone vs the uniform GPTQ grid")
    p.add_argument("--smoke", action="store_true", help="8 calibration, 2 test windows of 128 tokens (plumbing)")
    p.add_argument("--plot-only", type=Path, metavar="JSON", help="redraw <JSON>'s plot beside it, nothing else")
    args = p.parse_args(argv)
    setup_logging()
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text()), args.plot_only.with_suffix(".png"))
        return 0
    from presso.compression.io.calibration import read_text, windows_from_text
    from presso.compression.io.loading import load_model

    source = dense_model_dir()
    lm = load_model(source)
    lm.model.float().eval()
    w = token_windows(lm.tokenizer)
    calib, evals = w.calibration, w.evaluation
    n_cal = calib.shape[0]
    select = windows_from_text(lm.tokenizer, read_text(DATA / "valid.txt"), n_cal + 8, calib.shape[1],
                               "wikitext-2 valid")[n_cal:]
    if args.smoke:  # plumbing only: short windows, two levels, a few evaluations
        calib, evals, select = calib[:8, :128], evals[:2, :128], select[:2, :128]
        args.generations, args.offspring, args.fitness_samples, args.candidates = 2, 2, 2, 1
        for row in ROWS.values():
            row["space"] = {**row["space"], "bits": [3, 4], "group_sizes": [64, 128]}
    results: dict[str, Any] = {"machine": machine_info(), "command": " ".join(sys.argv), "rows": {}}
    dense_ppl = perplexity(lm.model, evals)
    results["dense_ppl"] = dense_ppl
    log.info("dense ppl %.2f", dense_ppl)
    grid = [(3, 64), (4, 64)] if args.smoke else UNIFORM_GRID
    space = {"methods": ["gptq"], "bits": [3, 4] if args.smoke else [2, 3, 4, 8], "group_sizes": [64, 128]}
    for name in [r for r in args.rows.split(",") if r]:
        row = ROWS[name]
        up = uniform(lm.model, lm.tokenizer, row["up"], calib, evals, source)  # first: warms kernels up
        ref = uniform(lm.model, lm.tokenizer, row["ref"], calib, evals, source)
        s = searched(lm, ref["bytes"], row["space"], calib, select, evals, source, args)
        gap = ref["ppl"] - up["ppl"]
        results["rows"][name] = {"ref": ref, "up": up, "searched": s,
                                 "gap_closed": (ref["ppl"] - s["ppl"]) / gap if gap else None}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "target_search.json").write_text(json.dumps(results, indent=2, default=str))
        (args.out / "target_search.md").write_text(_md(results))
    if args.floor_ppl is not None:
        results["floor"] = floor_row(lm, args.floor_ppl, space, calib, select, evals, source, args, dense_ppl, grid)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "target_search.json").write_text(json.dumps(results, indent=2, default=str))
        (args.out / "target_search.md").write_text(_md(results))
    try:
        if results["rows"]:
            plot(results, args.out / "target_search.png")
    except ImportError:
        log.info("matplotlib missing: no plot (--plot-only redraws it from the JSON)")
    print(_md(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
