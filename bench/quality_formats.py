"""Deployment-format rows of the quality benchmark (issue 19; BENCHMARKS.md §1 "Deployment formats").

SmolLM2-135M, the §1 protocol of bench/quality.py (64x512 calibration tokens from wikitext-2 valid, 40x512
evaluation windows of wikitext-2 test, the product's perplexity harness, helpers from bench/common.py), for
fp8 (FP8_DYNAMIC, FP8 static, FP8_BLOCK), int8 W8A8 (RTN, GPTQ), nvfp4 (W4A4, W4A16) and mxfp4 (W4A4,
W4A16); and with a transform or a KV cache: SmoothQuant (alpha 0.5) + INT8 W8A8 (RTN, GPTQ), GPTQ W4A16 g128
without and with the Hadamard rotation (``rotate``, QuaRot / SpinQuant R1) first, and GPTQ W4A16 g128 with an
FP8 KV cache (the recipe's ``kv_cache``; the peer's ``kv_cache_scheme``). Activations (and the KV cache) are
quantized in the evaluation on both sides: Presso's steps install their activation quantizers on the model
(compression/core/actquant.py; the KV cache: compression/core/kvquant.py), llm-compressor keeps its
quantize-dequantize forward after ``oneshot`` (its KV cache: compressed-tensors' QuantizedKVCache,
bench/peer_formats.py). Presso's weight-only perplexity of the same model (activations and KV cache
unquantized) is reported beside (``ppl_weights_only``) to show what they cost. The peer runs in .venv-peer
(bench/peer_formats.py) on the identical token windows.

Per row: compression seconds, perplexity, the artifact's bytes (``*.safetensors``), bits per weight on disk
of the block linears, and the ratio of the weight bytes to the format's ideal size (codes at 8 or 4 bits,
float32 FP8/INT8 scales, FP8 NVFP4 group scales + one float32 global, one byte per MXFP4 group of 32, int4
W4A16: one scale in the model's dtype per group, the group each layer resolves (SmolLM2: 96 on the 576-column
layers, 128 on down_proj); every other tensor as in the dense model, plus the untied head of a rotated model and
the k/v scales of a KV cache). A row whose ideal is not stated records None ("–").

``--calib N --windows M`` (smoke runs): the first N of the 64 calibration windows and the first M of the 40
evaluation windows (and of each OOD text), written as .npy under the work dir for the peer; not the protocol,
so never into bench/results (a results file keeps one protocol).

  PYTHONPATH=. .venv/bin/python bench/quality_formats.py --list
  PYTHONPATH=. .venv/bin/python bench/quality_formats.py --rows fp8_dynamic,nvfp4_w4a4 --out bench/results
  PYTHONPATH=. .venv/bin/python bench/quality_formats.py --skip-peer --ood    # Presso only, + OOD texts
  OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/quality_formats.py --rows gptq_w4a16_g128 \
      --calib 2 --windows 1 --out /tmp/qf-smoke                                 # smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
    CALIB_SAMPLES,
    DEVICE,
    EVAL_SAMPLES,
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

log = logging.getLogger("bench.quality_formats")
PEER_SCRIPT = REPO / "bench" / "peer_formats.py"

# name -> (label, Presso steps, or a whole recipe when it has more than steps: kv_cache)
ROWS: dict[str, tuple[str, list[dict[str, Any]] | dict[str, Any]]] = {
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
    "int8_w8a8_smoothquant": ("SmoothQuant 0.5 + INT8 W8A8 RTN (per-token activations)",
                              [{"method": "smoothquant", "alpha": 0.5}, {"method": "int8", "rounding": "rtn"}]),
    "int8_w8a8_smoothquant_gptq": ("SmoothQuant 0.5 + INT8 W8A8 GPTQ (per-token activations)",
                                   [{"method": "smoothquant", "alpha": 0.5}, {"method": "int8", "rounding": "gptq"}]),
    "gptq_w4a16_g128": ("GPTQ W4A16 g128 (int4 sym; g96 on 576-column layers)",
                        [{"method": "gptq", "bits": 4, "group_size": 128}]),
    "rotate_gptq_w4a16_g128": ("Hadamard rotation (R1) + GPTQ W4A16 g128",
                               [{"method": "rotate"}, {"method": "gptq", "bits": 4, "group_size": 128}]),
    "gptq_w4a16_g128_kv_fp8": ("GPTQ W4A16 g128 + FP8 KV cache (static per-tensor k/v scales)",
                               {"steps": [{"method": "gptq", "bits": 4, "group_size": 128}],
                                "kv_cache": {"format": "fp8"}}),
}
_KIND_STRATEGY = {"fp8_dynamic": ("fp8", "channel"), "fp8_static": ("fp8", "tensor"), "fp8_block": ("fp8", "block"),
                  "int8_w8a8_rtn": ("int8", "channel"), "int8_w8a8_gptq": ("int8", "channel"),
                  "nvfp4_w4a4": ("nvfp4", "tensor_group"), "nvfp4_w4a16": ("nvfp4", "tensor_group"),
                  "mxfp4_w4a4": ("mxfp4", "group"), "mxfp4_w4a16": ("mxfp4", "group"),
                  "int8_w8a8_smoothquant": ("int8", "channel"), "int8_w8a8_smoothquant_gptq": ("int8", "channel")}
# rows writing pack-quantized int weights: (bits, requested group size); scales in the model's dtype
_INT_GROUPS = {"gptq_w4a16_g128": (4, 128), "rotate_gptq_w4a16_g128": (4, 128), "gptq_w4a16_g128_kv_fp8": (4, 128)}


def recipe_of(row: str) -> dict[str, Any]:
    spec = ROWS[row][1]
    return spec if isinstance(spec, dict) else {"steps": spec}


def linear_shapes(model: Any) -> dict[str, tuple[int, int]]:
    from presso.compression.core.layout import find_layout, is_linear

    layout = find_layout(model)
    return {f"{layout.prefix}.{n}": tuple(m.weight.shape) for n, m in layout.blocks.named_modules() if is_linear(m)}


def _int_bits_per_weight(bits: int, group_size: int, n: int, k: int, scale_bits: int) -> float:
    """Codes plus one scale per resolved group (symmetric: no zero point) of an [N, K] weight."""
    from presso.compression.core.quant import num_groups, resolve_group

    return bits + scale_bits * n * num_groups(k, resolve_group(k, group_size)) / (n * k)


def _extra_ideal_bytes(dense: Any, model: Any) -> float:
    """Tensors the compressed model stores beyond the dense one's: the head a rotation unties (it absorbs the
    final norm) and the k/v scales of an FP8 KV cache (model dtype)."""
    from presso.compression.core import kvquant

    extra = 0.0
    emb_in, emb_out = dense.get_input_embeddings(), dense.get_output_embeddings()
    m_in, m_out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = emb_out is not None and emb_out.weight is emb_in.weight
    if tied and m_out is not None and m_out.weight is not m_in.weight:
        extra += m_out.weight.numel() * m_out.weight.element_size()
    elt = next(dense.parameters()).element_size()
    for q in kvquant.quantizers(model).values():
        extra += sum(s.numel() for s in (q.k_scale, q.v_scale) if s is not None) * elt
    return extra


def ideal_bytes(dense: Any, row: str, shapes: dict[str, tuple[int, int]],
                model: Any = None) -> tuple[float | None, float | None]:
    """(ideal weight bytes of the artifact, ideal bits per weight of the block linears) for the row's format;
    (None, None) for a row without a stated ideal. ``model``: the compressed model (its untied head, KV scales)."""
    from presso.compression.core.floatquant import ideal_bits_per_weight
    from presso.compression.eval.size import dense_bytes

    elt = next(dense.parameters()).element_size()
    if row not in _KIND_STRATEGY and row not in _INT_GROUPS:
        return None, None

    def per_weight(n: int, k: int) -> float:
        if row in _KIND_STRATEGY:
            kind, strategy = _KIND_STRATEGY[row]
            return ideal_bits_per_weight(kind, n, k, strategy)
        code_bits, group = _INT_GROUPS[row]
        return _int_bits_per_weight(code_bits, group, n, k, 8 * elt)

    total = float(dense_bytes(dense)) + (_extra_ideal_bytes(dense, model) if model is not None else 0.0)
    bits = 0.0
    for n, k in shapes.values():
        b = per_weight(n, k)
        total += n * k * (b / 8 - elt)
        bits += b * n * k
    return total, bits / sum(n * k for n, k in shapes.values())


def reduced_windows(windows: Windows, calib: int, evals: int, work: Path) -> Windows:
    """The first ``calib`` calibration and ``evals`` evaluation windows (and of each OOD text), saved as .npy
    under ``work`` for the peer (smoke runs: not the protocol)."""
    import numpy as np

    def save(t: Any, name: str) -> Path:
        path = work / f"{name}_{t.shape[0]}x{t.shape[1]}.npy"
        np.save(path, t.numpy().astype(np.int64))
        return path

    c, e = windows.calibration[:calib].clone(), windows.evaluation[:evals].clone()
    ood = {name: (w[:evals].clone(), save(w[:evals], f"eval_ood_{name}")) for name, (w, _p) in windows.ood.items()}
    return dataclasses.replace(windows, calibration=c, evaluation=e, calibration_path=save(c, "calib_valid"),
                               evaluation_path=save(e, "eval_test"), ood=ood)


def run_presso(row: str, dense: Any, tokenizer: Any, windows: Any, shapes: dict[str, tuple[int, int]],
               work: Path, ood: bool) -> dict[str, Any]:
    from presso.compression.core import actquant, kvquant
    from presso.compression.core.context import StepContext
    from presso.compression.eval.size import weight_stats
    from presso.compression.io.artifact import write_model
    from presso.compression.pipeline import compress
    from presso.compression.recipe import parse_recipe

    recipe = parse_recipe(recipe_of(row))
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
    # the activation records of the quantization step (the last step: a transform such as smoothquant first)
    layers = [r for s in report["steps"] if s["method"] != "kv_cache" for r in s.get("layers", [])]
    acts = [r["act"] for r in layers if isinstance(r, dict) and "tokens" in r.get("act", {})]
    kv = [r for s in report["steps"] if s["method"] == "kv_cache" for r in s.get("layers", [])]
    if acts:
        res["act_clip_rate_max"] = max(a["clip_rate"] for a in acts)
        res["act_clip_rate_mean"] = sum(a["clip_rate"] for a in acts) / len(acts)
        res["act_token_absmax_range"] = [min(a["token_absmax_min"] for a in acts),
                                         max(a["token_absmax_max"] for a in acts)]
    if kv:
        res["kv_layers"] = len(kv)
        res["kv_clip_rate_max"] = max(r.get("clip_rate", 0.0) for r in kv)
        res["kv_clip_rate_mean"] = sum(r.get("clip_rate", 0.0) for r in kv) / len(kv)
        res["kv_scale_range"] = {"k": [min(r["k_scale"] for r in kv), max(r["k_scale"] for r in kv)],
                                 "v": [min(r["v_scale"] for r in kv), max(r["v_scale"] for r in kv)]}
    if acts or kv:
        with actquant.disabled(model), kvquant.disabled(model):
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
        res["ideal_bytes"], res["ideal_bits_per_weight"] = ideal_bytes(dense, row, shapes, model)
        res["size_vs_ideal"] = None if res["ideal_bytes"] is None else res["weights_bytes"] / res["ideal_bytes"]
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
        if "kv_clip_rate_mean" in p:
            clip += f"; KV {100 * p['kv_clip_rate_mean']:.3f}% / {100 * p['kv_clip_rate_max']:.3f}%"
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
    ap.add_argument("--calib", type=int, default=CALIB_SAMPLES,
                    help=f"calibration windows, the first N of {CALIB_SAMPLES} (smoke runs; default: the protocol)")
    ap.add_argument("--windows", type=int, default=EVAL_SAMPLES,
                    help=f"evaluation windows, the first N of {EVAL_SAMPLES} (smoke runs; default: the protocol)")
    args = ap.parse_args(argv)
    if not (1 <= args.calib <= CALIB_SAMPLES and 1 <= args.windows <= EVAL_SAMPLES):
        ap.error(f"--calib must be 1..{CALIB_SAMPLES} and --windows 1..{EVAL_SAMPLES}")
    reduced = (args.calib, args.windows) != (CALIB_SAMPLES, EVAL_SAMPLES)
    if reduced and args.out.resolve() == (REPO / "bench" / "results").resolve():
        ap.error("--calib / --windows are not the protocol: give a scratch --out (not bench/results)")
    if args.list:
        for name, (label, steps) in ROWS.items():
            print(f"{name:26s} {label}  {json.dumps(steps)}")
        return 0
    setup_logging()
    pats = [p.strip() for p in args.rows.split(",") if p.strip()]
    rows = [r for r in ROWS if any(fnmatch.fnmatchcase(r, p) for p in pats)]
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="presso-formats-"))
    work.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "quality_formats.json"
    results: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    protocol = {"calib_windows": args.calib, "eval_windows": args.windows}
    # a results file keeps one protocol (files from before the option: the full one)
    held = results.get("protocol", {"calib_windows": CALIB_SAMPLES, "eval_windows": EVAL_SAMPLES})
    if results and held != protocol:
        ap.error(f"{json_path} holds rows of protocol {held}, not {protocol}: another --out")
    results["protocol"] = protocol
    dense, tokenizer = load_dense()
    windows = token_windows(tokenizer)
    if reduced:
        windows = reduced_windows(windows, args.calib, args.windows, work)
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
