"""Deployment-format rows of the quality benchmark (issue 19; BENCHMARKS.md §1 "Deployment formats").

SmolLM2-135M, the §1 protocol of bench/quality.py (64x512 calibration tokens from wikitext-2 valid, 40x512
evaluation windows of wikitext-2 test, the product's perplexity harness, helpers from bench/common.py), for
fp8 (FP8_DYNAMIC, FP8 static, FP8_BLOCK), int8 W8A8 (RTN, GPTQ), nvfp4 (W4A4, W4A16) and mxfp4 (W4A4,
W4A16). Activations are quantized in the evaluation on both sides: Presso's steps install their activation
quantizers on the model (compression/core/actquant.py), llm-compressor keeps its quantize-dequantize forward
after ``oneshot``. Presso's weight-only perplexity of the same model is reported beside (``ppl_weights_only``)
to show what the activations cost. The peer runs in .venv-peer (bench/peer_formats.py) on the identical
token windows.

Per row: compression seconds, perplexity, the artifact's bytes (``*.safetensors``), bits per weight on disk
of the block linears, and the ratio of the weight bytes to the format's ideal size (codes at 8 or 4 bits,
float32 FP8/INT8 scales, FP8 NVFP4 group scales + one float32 global, one byte per MXFP4 group of 32; every
other tensor as in the dense model).

  PYTHONPATH=. .venv/bin/python bench/quality_formats.py --list
  PYTHONPATH=. .venv/bin/python bench/quality_formats.py --rows fp8_dynamic,nvfp4_w4a4 --out bench/results
  PYTHONPATH=. .venv/bin/python bench/quality_formats.py --skip-peer --ood    # Presso only, + OOD texts
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DEVICE,
    PEER_PY,
    REPO,
    dense_model_dir,
    dir_bytes,
    linear_bits_on_disk,
    load_dense,
    machine_info,
    perplexity,
    setup_logging,
    token_windows,
)

log = logging.getLogger("bench.quality_formats")
PEER_SCRIPT = REPO / "bench" / "peer_formats.py"

# name -> (label, Presso steps)
ROWS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "fp8_dynamic": ("FP8 dynamic (FP8_DYNAMIC: channel weights, per-token activations)",
                    [{"method": "fp8", "scheme": "FP8_DYNAMIC"}]),
    "fp8_static": ("FP8 static (FP8: tensor weights, calibrated per-tensor activations)",
                   [{"method": "fp8", "scheme": "FP8"}]),
    "fp8_block": ("FP8 block (FP8_BLOCK: 128x128 weight blocks, per-128-group activations)",
                  [{"method": "fp8", "scheme": "FP8_BLOCK"}]),
    "int8_w8a8_rtn": ("INT8 W8A8 RTN (per-token activations)", [{"method": "int8", "rounding": "rtn"}]),
    "int8_w8a8_gptq": ("INT8 W8A8 GPTQ (per-token activations)", [{"method": "int8", "rounding": "gptq"}]),
    "nvfp4_w4a4": ("NVFP4 W4A4", [{"method": "nvfp4", "scheme": "NVFP4"}]),
    "nvfp4_w4a16": ("NVFP4 W4A16", [{"method": "nvfp4", "scheme": "NVFP4A16"}]),
    "mxfp4_w4a4": ("MXFP4 W4A4", [{"method": "mxfp4", "scheme": "MXFP4"}]),
    "mxfp4_w4a16": ("MXFP4 W4A16", [{"method": "mxfp4", "scheme": "MXFP4A16"}]),
}
_KIND_STRATEGY = {"fp8_dynamic": ("fp8", "channel"), "fp8_static": ("fp8", "tensor"), "fp8_block": ("fp8", "block"),
                  "int8_w8a8_rtn": ("int8", "channel"), "int8_w8a8_gptq": ("int8", "channel"),
                  "nvfp4_w4a4": ("nvfp4", "tensor_group"), "nvfp4_w4a16": ("nvfp4", "tensor_group"),
                  "mxfp4_w4a4": ("mxfp4", "group"), "mxfp4_w4a16": ("mxfp4", "group")}


def linear_shapes(model: Any) -> dict[str, tuple[int, int]]:
    from presso.compression.core.layout import find_layout, is_linear

    layout = find_layout(model)
    return {f"{layout.prefix}.{n}": tuple(m.weight.shape) for n, m in layout.blocks.named_modules() if is_linear(m)}


def ideal_bytes(dense: Any, row: str, shapes: dict[str, tuple[int, int]]) -> tuple[float, float]:
    """(ideal weight bytes of the artifact, ideal bits per weight of the block linears) for the row's format."""
    from presso.compression.core.floatquant import ideal_bits_per_weight
    from presso.compression.eval.size import dense_bytes

    kind, strategy = _KIND_STRATEGY[row]
    elt = next(dense.parameters()).element_size()
    total = float(dense_bytes(dense))
    bits = 0.0
    for n, k in shapes.values():
        b = ideal_bits_per_weight(kind, n, k, strategy)
        total += n * k * (b / 8 - elt)
        bits += b * n * k
    return total, bits / sum(n * k for n, k in shapes.values())


def run_presso(row: str, dense: Any, tokenizer: Any, windows: Any, shapes: dict[str, tuple[int, int]],
               work: Path, ood: bool) -> dict[str, Any]:
    from presso.compression.core import actquant
    from presso.compression.core.context import StepContext
    from presso.compression.eval.size import weight_stats
    from presso.compression.io.artifact import write_model
    from presso.compression.pipeline import compress
    from presso.compression.recipe import parse_recipe

    recipe = parse_recipe({"steps": ROWS[row][1]})
    model = copy.deepcopy(dense)
    ctx = StepContext(calibration=windows.calibration if recipe.needs_calibration else None, seed=0, device=DEVICE)
    res: dict[str, Any] = {"loadavg_start": os.getloadavg()[0], "calibrated": recipe.needs_calibration}
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = compress(model, recipe, ctx)
    res["seconds"] = time.perf_counter() - t0
    res["cpu_seconds"] = time.process_time() - cpu0
    res["bits_per_weight"] = weight_stats(model).get("bits_per_weight")
    t = time.perf_counter()
    res["ppl"] = perplexity(model, windows.evaluation)
    layers = report["steps"][0]["layers"]
    acts = [r["act"] for r in layers if "tokens" in r.get("act", {})]
    if acts:
        res["act_clip_rate_max"] = max(a["clip_rate"] for a in acts)
        res["act_clip_rate_mean"] = sum(a["clip_rate"] for a in acts) / len(acts)
        res["act_token_absmax_range"] = [min(a["token_absmax_min"] for a in acts),
                                         max(a["token_absmax_max"] for a in acts)]
        with actquant.disabled(model):
            res["ppl_weights_only"] = perplexity(model, windows.evaluation)
    if ood:
        res["ppl_ood"] = {name: perplexity(model, w) for name, (w, _p) in windows.ood.items()}
    res["eval_seconds"] = time.perf_counter() - t
    out_dir = Path(tempfile.mkdtemp(prefix=f"presso-{row}-", dir=work))
    try:
        forms = write_model(model, tokenizer, out_dir)
        res["forms"] = forms
        res.update(dir_bytes(out_dir))
        res["disk_bits_per_weight"] = linear_bits_on_disk(out_dir, {n: a * b for n, (a, b) in shapes.items()})
        res["ideal_bytes"], res["ideal_bits_per_weight"] = ideal_bytes(dense, row, shapes)
        res["size_vs_ideal"] = res["weights_bytes"] / res["ideal_bytes"]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    res["status"] = "ok"
    return res


def run_peer(row: str, windows: Any, work: Path, timeout: float, ood: bool) -> dict[str, Any]:
    if not PEER_PY.exists():
        return {"status": "not run (no .venv-peer: bench/quality.py --setup-peer)"}
    out = work / f"peer-{row}.json"
    cmd = [str(PEER_PY), str(PEER_SCRIPT), "--row", row, "--model-dir", str(dense_model_dir()),
           "--calib", str(windows.calibration_path), "--eval", str(windows.evaluation_path),
           "--out", str(out), "--work-dir", str(work)]
    if ood:
        for dom, (_w, path) in windows.ood.items():
            cmd += ["--eval-ood", f"{dom}={path}"]
    env = dict(os.environ)
    if "PRESSO_PEER_PYTHON" not in env:
        env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    logfile = work / f"peer-{row}.log"
    try:
        with logfile.open("w") as fh:
            subprocess.run(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: timed out after {timeout:.0f}s", "log": str(logfile)}
    if not out.exists():
        return {"status": "failed", "error": logfile.read_text(errors="replace")[-1500:]}
    res = json.loads(out.read_text())
    if res.get("status") != "ok":
        res["status"] = f"failed: {res.get('error', '?')}"[:400]
    return res


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def report_md(results: dict[str, Any]) -> str:
    lines = [
        "| row | Presso ppl | Presso ppl, weights only | peer ppl | Presso s | peer s | bits/weight on disk "
        "(Presso / peer / ideal) | weights MB (Presso / peer) | Presso bytes / ideal | act clip rate (mean / max) |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    dense = results.get("dense", {})
    if dense:
        lines.append(f"| Dense (float32) | {_fmt(dense.get('ppl'))} | | {_fmt(dense.get('peer_ppl'))} | – | – | "
                     f"32 | {dense.get('weights_bytes', 0) / 1e6:.1f} | | |")
    for row, (label, _steps) in ROWS.items():
        r = results.get(row)
        if not r:
            continue
        p, q = r.get("presso", {}), r.get("peer", {})
        peer_ok = q.get("status") == "ok"
        clip = (f"{100 * p['act_clip_rate_mean']:.3f}% / {100 * p['act_clip_rate_max']:.3f}%"
                if "act_clip_rate_mean" in p else "(weight-only)")
        lines.append(
            f"| {label} | {_fmt(p.get('ppl'))} | {_fmt(p.get('ppl_weights_only'))} | "
            f"{_fmt(q.get('ppl')) if peer_ok else q.get('status', '–')[:80]} | {_fmt(p.get('seconds'), '.1f')} | "
            f"{_fmt(q.get('seconds'), '.1f') if peer_ok else '–'} | {_fmt(p.get('disk_bits_per_weight'), '.3f')} / "
            f"{_fmt(q.get('disk_bits_per_weight'), '.3f') if peer_ok else '–'} / "
            f"{_fmt(p.get('ideal_bits_per_weight'), '.3f')} | {_fmt(p.get('weights_bytes', 0) / 1e6, '.1f')} / "
            f"{_fmt(q.get('weights_bytes', 0) / 1e6, '.1f') if peer_ok else '–'} | "
            f"{_fmt(p.get('size_vs_ideal'), '.4f')} | {clip} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="*", help="comma-separated row names or globs (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--work", type=Path, default=None, help="temporary artifacts (default: a temp dir)")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--ood", action="store_true", help="also score the out-of-domain texts (bench/data/ood)")
    ap.add_argument("--peer-timeout", type=float, default=3600)
    ap.add_argument("--force", action="store_true", help="recompute rows already in the results file")
    args = ap.parse_args(argv)
    if args.list:
        for name, (label, steps) in ROWS.items():
            print(f"{name:16s} {label}  {json.dumps(steps)}")
        return 0
    setup_logging()
    pats = [p.strip() for p in args.rows.split(",") if p.strip()]
    rows = [r for r in ROWS if any(fnmatch.fnmatchcase(r, p) for p in pats)]
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="presso-formats-"))
    work.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "quality_formats.json"
    results: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    dense, tokenizer = load_dense()
    windows = token_windows(tokenizer)
    shapes = linear_shapes(dense)
    if "dense" not in results:
        from presso.compression.eval.size import dense_bytes

        results["dense"] = {"ppl": perplexity(dense, windows.evaluation), "weights_bytes": dense_bytes(dense)}
    results["machine"] = machine_info()
    results["command"] = " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    for row in rows:
        entry = results.get(row) or {}
        if entry.get("presso", {}).get("status") != "ok" or args.force:
            log.info("presso: %s", row)
            entry["presso"] = run_presso(row, dense, tokenizer, windows, shapes, work, args.ood)
            log.info("presso %s: %s", row, {k: entry["presso"].get(k) for k in ("ppl", "seconds", "size_vs_ideal")})
        if not args.skip_peer and (entry.get("peer", {}).get("status") != "ok" or args.force):
            log.info("peer: %s", row)
            entry["peer"] = run_peer(row, windows, work, args.peer_timeout, args.ood)
            log.info("peer %s: %s", row, {k: entry["peer"].get(k) for k in ("ppl", "seconds", "status")})
        results[row] = entry
        json_path.write_text(json.dumps(results, indent=2, default=str))
        (args.out / "quality_formats.md").write_text(report_md(results))
    print(report_md(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
