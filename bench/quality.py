"""Compression quality benchmark: Presso vs llmcompressor on SmolLM2-135M (../shared/docs/benchmarks.md §1).

Every row is a Presso recipe run through compression.pipeline.compress on a fresh copy of the dense
model, its artifact written with compression.io.artifact.write_model, and its perplexity measured
with the product's own harness (compression.eval.perplexity) on the first 40x512-token windows of
wikitext-2 test and, out of the calibration domain, of each text in bench/data/ood/ (code: CPython
stdlib source; docs: the Python language reference; README there); calibration is 64x512 tokens
from the start of wikitext-2 valid. Where llmcompressor
has the same method, bench/peer_llmcompressor.py runs it in the separate venv .venv-peer on the
identical token windows (.npy) and its figures go beside Presso's.

Results are cached per row in <out>/quality.json: a re-run only computes rows that are missing,
whose recipe changed, whose engine was missing before, or that are named with --force. After
every row, quality.md, quality.json and the PNG plots are rewritten, so a long run leaves
partial results.

Examples:
  PYTHONPATH=. .venv/bin/python bench/quality.py --list                  # rows, engines present
  PYTHONPATH=. .venv/bin/python bench/quality.py                         # every row (cached rows reused)
  PYTHONPATH=. .venv/bin/python bench/quality.py --rows rtn_w4_g64,gptq_*  # a selection (globs, groups)
  PYTHONPATH=. .venv/bin/python bench/quality.py --rows quant --skip-peer  # Presso only, quantization rows
  PYTHONPATH=. .venv/bin/python bench/quality.py --rows awq_w4_g64 --force # recompute a cached row
  PYTHONPATH=. .venv/bin/python bench/quality.py --report-only           # rewrite md/plots from the JSON
  PYTHONPATH=. .venv/bin/python bench/quality.py --setup-peer            # create .venv-peer (llmcompressor)
Groups for --rows: dense, quant, prune, lowrank, eora, combined, peer (rows llmcompressor also runs).
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `compression` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DEVICE,
    PEER_PY,
    REPO,
    Windows,
    dense_model_dir,
    dir_bytes,
    linear_bits_on_disk,
    load_dense,
    machine_info,
    perplexity,
    setup_logging,
    token_windows,
)

log = logging.getLogger("bench.quality")

PEER_SCRIPT = REPO / "bench" / "peer_llmcompressor.py"
PEER_INSTALL = [  # torch first, so the CPU wheel on this disk satisfies llmcompressor's torch pin
    ["{py}", "-m", "pip", "install", "torch==2.13.0"],
    ["{py}", "-m", "pip", "install", "llmcompressor==0.14.0.1"],
]

Q = {"group_size": 64, "ignore": ["lm_head"]}


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    group: str
    steps: list[dict[str, Any]] | None  # None: the dense baseline
    peer: bool = False
    peer_as: str | None = None  # compare with the peer run of another row (same peer recipe)

    @property
    def peer_name(self) -> str:
        return self.peer_as or self.name

    @property
    def recipe(self) -> dict[str, Any] | None:
        return None if self.steps is None else {"steps": self.steps}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:12]


def _rows() -> list[Row]:
    def gptq(bits: int, act: bool = False) -> dict[str, Any]:
        return {"method": "gptq", "bits": bits, "act_order": act, **Q}

    sp = {"ignore": ["lm_head"]}
    rows = [
        Row("dense", "Dense (float32)", "dense", None, peer=True),
        Row("rtn_w4_g64", "RTN W4 g64", "quant", [{"method": "rtn", "bits": 4, **Q}], peer=True),
        Row("rtn_w4_g64_minmax", "RTN W4 g64 min-max", "quant",
            [{"method": "rtn", "bits": 4, "observer": "minmax", **Q}], peer=True, peer_as="rtn_w4_g64"),
        Row("gptq_w4_g64", "GPTQ W4 g64", "quant", [gptq(4)], peer=True),
        Row("gptq_w4_g64_act", "GPTQ W4 g64 act-order", "quant", [gptq(4, True)], peer=True),
        Row("gptq_w3_g64", "GPTQ W3 g64", "quant", [gptq(3)], peer=True),
        Row("awq_w4_g64", "AWQ W4 g64", "quant", [{"method": "awq", "bits": 4, **Q}], peer=True),
        Row("awq_w4_g64_verify", "AWQ W4 g64, exponents re-ranked on the block output", "quant",
            [{"method": "awq", "bits": 4, "verify": 4, **Q}], peer=True, peer_as="awq_w4_g64"),
        Row("rtn_w3_g64", "RTN W3 g64", "quant", [{"method": "rtn", "bits": 3, **Q}]),
        Row("awq_w3_g64", "AWQ W3 g64", "quant", [{"method": "awq", "bits": 3, **Q}]),
        Row("awq_w3_g64_verify", "AWQ W3 g64, exponents re-ranked on the block output", "quant",
            [{"method": "awq", "bits": 3, "verify": 4, **Q}]),
        Row("hqq_w4_g64", "HQQ W4 g64", "quant", [{"method": "hqq", "bits": 4, **Q}]),
        Row("magnitude_50", "Magnitude 50%", "prune", [{"method": "magnitude", "sparsity": 0.5, **sp}]),
        Row("magnitude_24", "Magnitude 2:4", "prune", [{"method": "magnitude", "pattern": "2:4", **sp}]),
        Row("wanda_50", "Wanda 50%", "prune", [{"method": "wanda", "sparsity": 0.5, **sp}], peer=True),
        Row("wanda_24", "Wanda 2:4", "prune", [{"method": "wanda", "pattern": "2:4", **sp}], peer=True),
        Row("sparsegpt_50", "SparseGPT 50%", "prune", [{"method": "sparsegpt", "sparsity": 0.5, **sp}], peer=True),
        Row("sparsegpt_24", "SparseGPT 2:4", "prune", [{"method": "sparsegpt", "pattern": "2:4", **sp}], peer=True),
        Row("sparsegpt_50_w4", "SparseGPT 50% + W4 g64", "combined",
            [{"method": "sparsegpt", "sparsity": 0.5, "bits": 4, **Q}], peer=True),
        Row("structured_20", "Structured -20% params", "prune", [{"method": "prune_structured", "ratio": 0.2, **sp}]),
        Row("structured_30", "Structured -30% params", "prune", [{"method": "prune_structured", "ratio": 0.3, **sp}]),
    ]
    for pct in (10, 20, 30):
        rows.append(Row(f"svd_{pct}", f"SVD -{pct}%", "lowrank", [{"method": "svd", "ratio": pct / 100, **sp}]))
    for pct in (10, 20, 30):
        rows.append(Row(f"svd_llm_{pct}", f"SVD-LLM -{pct}%", "lowrank",
                        [{"method": "svd_llm", "ratio": pct / 100, **sp}]))
    for r in (16, 32, 64):
        rows.append(Row(f"gptq_w3_g64_eora{r}", f"GPTQ W3 g64 + EoRA r{r}", "eora",
                        [gptq(3), {"method": "eora", "rank": r, **sp}]))
    joint24 = {"method": "sparsegpt", "pattern": "2:4", "bits": 4, **Q}
    rows.append(Row("sparse24_w4", "2:4 + W4 g64", "combined", [joint24], peer=True))
    rows.append(Row("sparse24_w4_eora32", "2:4 + W4 g64 + EoRA r32", "eora",
                    [joint24, {"method": "eora", "rank": 32, **sp}]))
    return rows


ROWS = _rows()
BY_NAME = {r.name: r for r in ROWS}


def select_rows(spec: str | None) -> list[Row]:
    if not spec:
        return list(ROWS)
    chosen: list[Row] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        hit = [r for r in ROWS if fnmatch.fnmatchcase(r.name, part) or r.group == part or (part == "peer" and r.peer)]
        if not hit:
            raise SystemExit(f"--rows: {part!r} matches no row (see --list)")
        chosen += [r for r in hit if r not in chosen]
    return chosen


# --- Presso side -------------------------------------------------------------------------------------------
def missing_engines(row: Row) -> list[str]:
    from presso.compression.recipe import parse_recipe
    from presso.compression.registry import engine_for

    if row.recipe is None:
        return []
    missing = []
    for step in parse_recipe(row.recipe).steps:
        try:
            engine_for(step)
        except NotImplementedError:
            missing.append(step.method)
    return missing


def linear_numels(model: Any) -> dict[str, int]:
    from presso.compression.core.layout import find_layout, is_linear

    layout = find_layout(model)
    return {f"{layout.prefix}.{n}": m.weight.numel() for n, m in layout.blocks.named_modules() if is_linear(m)}


def ideal_bytes(dense: Any, steps: list[dict[str, Any]], numels: dict[str, int]) -> float | None:
    """bits x params + scales (+ zero points) for the quantized linears, everything else as in the dense model.
    Only for pure weight-quantization rows (one rtn/gptq/awq/hqq step)."""
    if len(steps) != 1 or steps[0]["method"] not in ("rtn", "gptq", "awq", "hqq"):
        return None
    s = steps[0]
    bits, group = s["bits"], s.get("group_size", 128)
    asym = s.get("symmetric") is False or (s["method"] == "hqq" and s.get("symmetric") is None)
    seen: set[int] = set()
    other = 0
    for p in dense.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            other += p.numel() * p.element_size()
    elt = next(dense.parameters()).element_size()
    total = float(other)
    mods = dict(dense.named_modules())
    for name, numel in numels.items():
        out_f, in_f = mods[name].weight.shape
        groups = out_f * (-(-in_f // group) if group > 0 else 1)
        total -= numel * elt
        total += numel * bits / 8 + groups * elt + (groups * bits / 8 if asym else 0)
    return total


def run_presso(row: Row, dense: Any, tokenizer: Any, windows: Any, numels: dict[str, int],
               work: Path) -> dict[str, Any]:
    from presso.compression.core.context import StepContext
    from presso.compression.eval.size import param_count, weight_stats
    from presso.compression.io.artifact import write_model
    from presso.compression.pipeline import compress
    from presso.compression.recipe import parse_recipe
    from presso.compression.registry import engine_for

    res: dict[str, Any] = {"loadavg_start": os.getloadavg()[0]}
    if row.recipe is None:
        model, res["seconds"], res["cpu_seconds"] = dense, 0.0, 0.0
    else:
        missing = missing_engines(row)
        if missing:
            return {"status": "not run (engine missing)", "missing": missing}
        recipe = parse_recipe(row.recipe)
        model = copy.deepcopy(dense)
        ctx = StepContext(calibration=windows.calibration, seed=0, device=DEVICE)
        cpu0, t0 = time.process_time(), time.perf_counter()
        try:
            report = compress(model, recipe, ctx)
        except NotImplementedError as exc:
            return {"status": "not run (engine missing)", "missing": [str(exc)]}
        except Exception as exc:  # reported in the table, never hidden
            log.exception("%s: compression failed", row.name)
            return {"status": f"failed: {type(exc).__name__}: {exc}"[:300], "seconds": time.perf_counter() - t0}
        res["seconds"] = time.perf_counter() - t0
        res["cpu_seconds"] = time.process_time() - cpu0
        res["steps"] = [{k: v for k, v in s.items() if k not in ("layers",)} for s in report["steps"]]
    res["params"] = param_count(model)
    res.update({k: v for k, v in weight_stats(model).items() if k in ("bits_per_weight", "sparsity")})
    t = time.perf_counter()
    res["ppl"] = perplexity(model, windows.evaluation)
    res["ppl_ood"] = {name: perplexity(model, w) for name, (w, _path) in windows.ood.items()}
    res["eval_seconds"] = time.perf_counter() - t
    out_dir = Path(tempfile.mkdtemp(prefix=f"presso-{row.name}-", dir=work))
    try:
        t = time.perf_counter()
        write_model(model, tokenizer, out_dir)
        if row.recipe is not None:
            for step in parse_recipe(row.recipe).steps:
                engine = engine_for(step)
                if hasattr(engine, "post_write"):
                    engine.post_write(out_dir, step)
        res["write_seconds"] = time.perf_counter() - t
        res.update(dir_bytes(out_dir))
        res["disk_bits_per_weight"] = linear_bits_on_disk(out_dir, numels)
        if row.steps is not None:
            ideal = ideal_bytes(dense, row.steps, numels)
            if ideal is not None:
                res["ideal_bytes"] = ideal
                res["size_vs_ideal"] = res["weights_bytes"] / ideal
        res["status"] = "ok"
    except Exception as exc:  # the ppl stands; the artifact problem is reported
        log.exception("%s: artifact write failed", row.name)
        res["status"] = f"artifact failed: {type(exc).__name__}: {exc}"
    finally:
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
    return res


# --- peer side ---------------------------------------------------------------------------------------------
def run_peer(name: str, windows: Any, work: Path, timeout: float) -> dict[str, Any]:
    if not PEER_PY.exists():
        return {"status": "not run (no .venv-peer: run bench/quality.py --setup-peer)"}
    out = work / f"peer-{name}.json"
    cmd = [str(PEER_PY), str(PEER_SCRIPT), "--row", name, "--model-dir", str(dense_model_dir()),
           "--calib", str(windows.calibration_path), "--eval", str(windows.evaluation_path),
           "--out", str(out), "--work-dir", str(work)]
    for dom, (_w, path) in windows.ood.items():
        cmd += ["--eval-ood", f"{dom}={path}"]
    log.info("peer: %s", " ".join(shlex.quote(c) for c in cmd))
    env = dict(os.environ)
    if "PRESSO_PEER_PYTHON" not in env:  # its own venv: nothing of the product's path leaks in
        env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    logfile = work / f"peer-{name}.log"  # streamed while it runs: tail -f it
    t0 = time.perf_counter()
    try:
        with logfile.open("w") as fh:
            proc = subprocess.run(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: timed out after {timeout:.0f}s", "log": str(logfile)}
    if not out.exists():
        tail = logfile.read_text(errors="replace")[-2000:]
        return {"status": f"failed: exit {proc.returncode}", "error": tail, "log": str(logfile)}
    res = json.loads(out.read_text())
    res["process_seconds"] = time.perf_counter() - t0
    if res.get("status") != "ok":
        res["status"] = f"failed: {res.get('error', '?')}"[:300]
    return res


# --- driver ------------------------------------------------------------------------------------------------
def load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"rows": {}, "commands": []}


def needs_run(row: Row, side: str, cached: dict[str, Any] | None, force: bool, ood: tuple[str, ...] = ()) -> bool:
    if force or cached is None or side not in cached:
        return True
    entry = cached[side]
    if cached.get("recipe_digest") != row.digest():
        return True
    if any(d not in (entry.get("ppl_ood") or {}) for d in ood):  # cached before the OOD texts existed
        return True
    status = str(entry.get("status", ""))
    return status != "ok"


def setup_peer() -> int:
    venv = PEER_PY.parent.parent
    if not PEER_PY.exists():
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    (venv / ".gitignore").write_text("*\n")
    for cmd in PEER_INSTALL:
        subprocess.run([c.format(py=PEER_PY) for c in cmd], check=True)
    return subprocess.run([str(PEER_PY), str(PEER_SCRIPT), "--list"], check=False).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", help="comma-separated row names, globs or groups (default: all)")
    p.add_argument("--skip-peer", action="store_true", help="run Presso only")
    p.add_argument("--skip-presso", action="store_true", help="run the peer only")
    p.add_argument("--force", action="store_true", help="recompute the selected rows even when cached")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results dir (default bench/results)")
    p.add_argument("--work", type=Path, default=None, help="scratch dir for artifacts and peer logs")
    p.add_argument("--peer-timeout", type=float, default=5400.0, help="seconds per peer row")
    p.add_argument("--list", action="store_true", help="list rows and whether their engines exist")
    p.add_argument("--report-only", action="store_true", help="rewrite quality.md and plots from quality.json")
    p.add_argument("--setup-peer", action="store_true", help="create .venv-peer with llmcompressor and exit")
    p.add_argument("--smoke", action="store_true",
                   help="plumbing check: 8 calibration and 2 eval windows (figures not comparable; use another --out)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if args.setup_peer:
        return setup_peer()
    if args.list:
        for r in ROWS:
            miss = missing_engines(r)
            state = f"engine missing: {','.join(miss)}" if miss else "ready"
            print(f"{r.name:22s} {r.group:9s} peer={'yes' if r.peer else 'no ':3s} {state:28s} {r.label}")
        return 0
    from bench.quality_report import write_report

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "quality.json"
    results = load_results(json_path)
    if args.report_only:
        write_report(results, args.out)
        return 0
    rows = select_rows(args.rows)
    command = "PYTHONPATH=. .venv/bin/python bench/quality.py " + " ".join(shlex.quote(a) for a in (argv or
                                                                                                    sys.argv[1:]))
    results["commands"] = sorted(set(results.get("commands", [])) | {command.strip()})
    results["machine"] = machine_info()
    work = args.work or Path(tempfile.mkdtemp(prefix="presso-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dense, tokenizer = load_dense()
    windows = token_windows(tokenizer)
    if args.smoke:
        windows = _smoke_windows(windows, work)
    numels = linear_numels(dense)
    results["protocol"] = {"calibration": list(windows.calibration.shape), "evaluation": list(windows.evaluation.shape),
                           "model": str(dense_model_dir().name), "linear_weights": sum(numels.values()),
                           "ood": {d: [p.name, list(w.shape)] for d, (w, p) in windows.ood.items()}}
    for row in rows:
        cached = results["rows"].get(row.name)
        entry = dict(cached) if cached and cached.get("recipe_digest") == row.digest() else {}
        entry.update({"label": row.label, "group": row.group, "recipe": row.recipe, "recipe_digest": row.digest(),
                      "peer_expected": row.peer})
        ood = tuple(windows.ood)
        if not args.skip_presso and needs_run(row, "presso", cached, args.force, ood):
            log.info("presso: %s ...", row.name)
            entry["presso"] = run_presso(row, dense, tokenizer, windows, numels, work)
            entry["presso"]["command"] = command
            log.info("presso: %s -> %s", row.name, _brief(entry["presso"]))
            results["rows"][row.name] = entry
            _save(results, json_path, args.out)
        shared = (results["rows"].get(row.peer_as) or {}).get("peer") if row.peer_as else None
        if shared and shared.get("status") == "ok":
            entry["peer"] = {**shared, "shared_with": row.peer_as}
        elif row.peer and not args.skip_peer and needs_run(row, "peer", cached, args.force, ood):
            log.info("peer: %s ...", row.peer_name)
            entry["peer"] = run_peer(row.peer_name, windows, work, args.peer_timeout)
            entry["peer"]["command"] = command
            log.info("peer: %s -> %s", row.name, _brief(entry["peer"]))
        results["rows"][row.name] = entry
        _save(results, json_path, args.out)
    log.info("done: %s", args.out)
    return 0


def _smoke_windows(windows: Windows, work: Path) -> Windows:
    import numpy as np

    calib, evals = windows.calibration[:8].clone(), windows.evaluation[:2].clone()
    cpath, epath = work / "smoke_calib.npy", work / "smoke_eval.npy"
    np.save(cpath, calib.numpy())
    np.save(epath, evals.numpy())
    ood = {}
    for dom, (w, _p) in windows.ood.items():
        ood[dom] = (w[:2].clone(), work / f"smoke_ood_{dom}.npy")
        np.save(ood[dom][1], ood[dom][0].numpy())
    return Windows(calib, evals, cpath, epath, ood)


def _brief(res: dict[str, Any]) -> str:
    keys = ("status", "ppl", "seconds", "weights_bytes")
    return json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items() if k in keys})


def _save(results: dict[str, Any], json_path: Path, out: Path) -> None:
    from bench.quality_report import write_report

    order = {r.name: i for i, r in enumerate(ROWS)}
    results["rows"] = dict(sorted(results["rows"].items(), key=lambda kv: order.get(kv[0], 1 << 20)))
    json_path.write_text(json.dumps(results, indent=2, default=str))
    write_report(results, out)


if __name__ == "__main__":
    sys.exit(main())
