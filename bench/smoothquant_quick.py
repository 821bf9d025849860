"""Small CPU comparisons for issue 19 on SmolLM2-135M, activations (and the KV cache) quantized in the evaluation:
INT8 W8A8 (RTN, per-token activations) without and with smoothquant (alpha 0.5, and the per-group alpha search);
with --rows, also RTN vs GPTQ rounding vs AWQ for NVFP4 W4A16 / FP8 dynamic, INT8 W8A8 with an FP8 KV cache (per tensor
or per KV head), and W4A4 /
W4A16 without and with the Hadamard rotation.

Fewer windows than the §1 protocol so it fits a shared 2-core CPU: the first ``--calib`` of the 64x512 wikitext-2
valid calibration windows and the first ``--windows`` of the 40x512 wikitext-2 test windows (bench/common.py).

  OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/smoothquant_quick.py --calib 16 --windows 8
  OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/smoothquant_quick.py --calib 16 --windows 8 \
      --rows nvfp4_w4a16_rtn,nvfp4_w4a16_gptq,int8_w8a8_rtn_kv_fp8
  OMP_NUM_THREADS=1 PYTHONPATH=. nice -n 10 .venv/bin/python bench/smoothquant_quick.py --calib 16 --windows 8 \
      --rows awq_nvfp4_w4a16,int8_w8a8_rtn_kv_fp8_head,awq_gptq_nvfp4_w4a16
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, load_dense, perplexity, setup_logging, token_windows  # noqa: E402

log = logging.getLogger("bench.smoothquant_quick")
ROWS = {
    "dense": [],
    "int8_w8a8_rtn": [{"method": "int8"}],
    "smoothquant_0.5+int8": [{"method": "smoothquant"}, {"method": "int8"}],
    "smoothquant_search+int8": [{"method": "smoothquant", "search": True}, {"method": "int8"}],
    # GPTQ rounding onto the float grids (not run by default)
    "nvfp4_w4a16_rtn": [{"method": "nvfp4", "scheme": "NVFP4A16"}],
    "nvfp4_w4a16_gptq": [{"method": "nvfp4", "scheme": "NVFP4A16", "rounding": "gptq"}],
    "fp8_dynamic_gptq": [{"method": "fp8", "rounding": "gptq"}],
    "fp8_dynamic_rtn": [{"method": "fp8"}],
    "int8_w8a8_rtn_kv_fp8": {"steps": [{"method": "int8"}], "kv_cache": {"format": "fp8"}},
    "int8_w8a8_rtn_kv_fp8_head": {"steps": [{"method": "int8"}],
                                  "kv_cache": {"format": "fp8", "strategy": "attn_head"}},
    # AWQ on the float grids
    "awq_nvfp4_w4a16": [{"method": "awq", "format": "nvfp4", "scheme": "NVFP4A16"}],
    "awq_gptq_nvfp4_w4a16": [{"method": "awq", "format": "nvfp4", "scheme": "NVFP4A16", "solver": "gptq"}],
    # rotation (QuaRot R1) before W4A4 / W4A16
    "rotate+int8_w8a8_rtn": [{"method": "rotate"}, {"method": "int8"}],
    "mxfp4_w4a4": [{"method": "mxfp4"}],
    "rotate+mxfp4_w4a4": [{"method": "rotate"}, {"method": "mxfp4"}],
    "nvfp4_w4a4": [{"method": "nvfp4"}],
    "rotate+nvfp4_w4a4": [{"method": "rotate"}, {"method": "nvfp4"}],
    "rtn_w4a16_g128": [{"method": "rtn", "bits": 4, "group_size": 128}],
    "rotate+rtn_w4a16_g128": [{"method": "rotate"}, {"method": "rtn", "bits": 4, "group_size": 128}],
    "gptq_w4a16_g128": [{"method": "gptq", "bits": 4, "group_size": 128}],
    "rotate+gptq_w4a16_g128": [{"method": "rotate"}, {"method": "gptq", "bits": 4, "group_size": 128}],
}
DEFAULT_ROWS = ["dense", "int8_w8a8_rtn", "smoothquant_0.5+int8", "smoothquant_search+int8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "smoothquant_quick.json")
    args = ap.parse_args()
    setup_logging()
    from presso.compression.core.context import StepContext
    from presso.compression.pipeline import compress
    from presso.compression.recipe import parse_recipe

    dense, tok = load_dense()
    win = token_windows(tok)
    calib, evals = win.calibration[: args.calib], win.evaluation[: args.windows]
    results: dict = {"calib_windows": list(calib.shape), "eval_windows": list(evals.shape), "rows": {}}
    if args.out.exists():  # rows of earlier runs with the same windows are kept
        old = json.loads(args.out.read_text())
        if old.get("calib_windows") == results["calib_windows"] and old.get("eval_windows") == results["eval_windows"]:
            results["rows"] = old.get("rows", {})
    for row in args.rows.split(","):
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        spec = ROWS[row]
        if spec:
            recipe = parse_recipe(spec if isinstance(spec, dict) else {"steps": spec})
            compress(model, recipe, StepContext(calibration=calib if recipe.needs_calibration else None))
        seconds = time.perf_counter() - t0
        ppl = perplexity(model, evals)
        results["rows"][row] = {"ppl": ppl, "seconds": seconds}
        log.info("%s: ppl %.3f (%.1fs)", row, ppl, seconds)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))  # noqa: T201 - the benchmark's output


if __name__ == "__main__":
    main()
