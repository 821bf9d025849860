"""Which GPTQ / HQQ setting overfits the calibration domain? One change at a time, three domains (issue 22).

SmolLM2-135M (float32, bench/common.py), calibration 64x512 tokens of wikitext-2 valid (unless a
variant says otherwise), perplexity on the first 40x512-token windows of wikitext-2 test and of each
out-of-domain text of bench/data/ood/ (code, docs), all with the product's harness. Each variant is
one Presso recipe step; its result is cached as <out>/<variant>.json, so runs can be split over
processes (one per core) and re-run cheaply; --table prints the markdown table of everything cached.

  PYTHONPATH=. .venv/bin/python bench/ood_ablation.py --list
  PYTHONPATH=. .venv/bin/python bench/ood_ablation.py --variants gptq4_dynamic,gptq4_static   # compute
  PYTHONPATH=. .venv/bin/python bench/ood_ablation.py --table                                 # print
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import DEVICE, REPO, load_dense, perplexity, setup_logging, token_windows  # noqa: E402

log = logging.getLogger("bench.ood_ablation")
Q = {"group_size": 64, "ignore": ["lm_head"]}


def _g(bits: int, **kw: Any) -> dict[str, Any]:
    return {"method": "gptq", "bits": bits, **Q, **kw}


# name -> (what changes, recipe step or None for dense, calibration (samples, seq_len) or None = 64x512)
VARIANTS: dict[str, tuple[str, dict[str, Any] | None, tuple[int, int] | None]] = {
    "dense": ("no compression", None, None),
    "rtn4": ("RTN W4 g64 (min-max)", {"method": "rtn", "bits": 4, **Q}, None),
    "rtn4_mse": ("RTN W4 g64, MSE clipping observer", {"method": "rtn", "bits": 4, "observer": "mse", **Q}, None),
    "rtn3": ("RTN W3 g64 (min-max)", {"method": "rtn", "bits": 3, **Q}, None),
    # GPTQ W4: the previous default was dynamic groups, damp 0.01 relative, min-max, no act-order
    "gptq4_dynamic": ("GPTQ W4: previous default (dynamic groups, damp 0.01)", _g(4, static_groups=False), None),
    "gptq4_static": ("GPTQ W4: static groups (from the original weights)", _g(4, static_groups=True), None),
    "gptq4_dynamic_damp10": ("GPTQ W4: dynamic, damp 0.10", _g(4, static_groups=False, damp_percent=0.1), None),
    "gptq4_dynamic_mse": ("GPTQ W4: dynamic, MSE clipping observer", _g(4, static_groups=False, observer="mse"),
                          None),
    "gptq4_mse_damp10": ("GPTQ W4: dynamic, MSE observer, damp 0.10", _g(4, static_groups=False, observer="mse",
                                                                          damp_percent=0.1), None),
    "gptq4_mse_damp03": ("GPTQ W4: dynamic, MSE observer, damp 0.03", _g(4, static_groups=False, observer="mse",
                                                                          damp_percent=0.03), None),
    # half the calibration windows replaced by text the model writes itself (the product's generate_windows)
    "gptq4_mse_mix": ("GPTQ W4: dynamic, MSE, 32 wikitext + 32 self-generated windows",
                      _g(4, static_groups=False, observer="mse"), (-32, 512)),
    "gptq4_static_mse": ("GPTQ W4: static, MSE clipping observer", _g(4, static_groups=True, observer="mse"), None),
    "gptq4_act": ("GPTQ W4: act-order (static groups)", _g(4, act_order=True, static_groups=True), None),
    "gptq4_static_damp10": ("GPTQ W4: static, damp 0.10", _g(4, static_groups=True, damp_percent=0.1), None),
    "gptq4_dynamic_c16": ("GPTQ W4: dynamic, 16x512 calibration", _g(4, static_groups=False), (16, 512)),
    # GPTQ W3
    "gptq3_dynamic": ("GPTQ W3: previous default (dynamic groups, damp 0.01)", _g(3, static_groups=False), None),
    "gptq3_static": ("GPTQ W3: static groups", _g(3, static_groups=True), None),
    "gptq3_dynamic_damp10": ("GPTQ W3: dynamic, damp 0.10", _g(3, static_groups=False, damp_percent=0.1), None),
    "gptq3_static_damp10": ("GPTQ W3: static, damp 0.10", _g(3, static_groups=True, damp_percent=0.1), None),
    "gptq3_act": ("GPTQ W3: act-order (static groups)", _g(3, act_order=True, static_groups=True), None),
    "gptq3_dynamic_mse": ("GPTQ W3: dynamic, MSE clipping observer", _g(3, static_groups=False, observer="mse"),
                          None),
    "gptq3_static_c16": ("GPTQ W3: static, 16x512 calibration", _g(3, static_groups=True), (16, 512)),
    # HQQ W4 symmetric (the row) and the default asymmetric one
    "hqq4_sym": ("HQQ W4 sym: previous default (per group best of HQQ / RTN min-max / RTN MSE by L2)",
                 {"method": "hqq", "bits": 4, "symmetric": True, **Q}, None),
    "hqq4_asym": ("HQQ W4 asym (HQQ's own default)", {"method": "hqq", "bits": 4, **Q}, None),
}


def _generated(dense: torch.nn.Module, n: int, seq_len: int) -> torch.Tensor:
    from presso.compression.io.calibration import generate_windows
    from presso.compression.spec import CalibrationSpec

    _, tok = load_dense()
    return generate_windows(dense, tok, n, seq_len, seed=0, prompt=CalibrationSpec().seed_prompt, device=DEVICE)


def run_variant(name: str, dense: torch.nn.Module, windows: Any) -> dict[str, Any]:
    from presso.compression.core.context import StepContext
    from presso.compression.pipeline import compress
    from presso.compression.recipe import parse_recipe

    what, step, calib = VARIANTS[name]
    res: dict[str, Any] = {"variant": name, "what": what, "step": step, "calibration": list(calib or (64, 512))}
    model = dense
    t0 = time.perf_counter()
    if step is not None:
        model = copy.deepcopy(dense)
        cal = windows.calibration
        if calib is not None and calib[0] < 0:  # -n: the first 64 - n windows, then n the model writes itself
            cal = torch.cat([cal[: cal.shape[0] + calib[0]], _generated(dense, -calib[0], calib[1])])
        elif calib is not None:
            cal = cal.reshape(-1)[: calib[0] * calib[1]].reshape(calib[0], calib[1])
        compress(model, parse_recipe({"steps": [step]}), StepContext(calibration=cal, seed=0, device=DEVICE))
    res["compress_seconds"] = time.perf_counter() - t0
    res["ppl"] = {"wikitext": perplexity(model, windows.evaluation)}
    log.info("%s: wikitext %.2f", name, res["ppl"]["wikitext"])
    for dom, (w, _path) in windows.ood.items():
        res["ppl"][dom] = perplexity(model, w)
        log.info("%s: %s %.2f", name, dom, res["ppl"][dom])
    res["seconds"] = time.perf_counter() - t0
    return res


def table(out: Path) -> str:
    rows = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    doms = ["wikitext", "code", "docs"]
    lines = ["| variant | what changes | " + " | ".join(doms) + " |", "|---|---|" + "---:|" * len(doms)]
    for name in VARIANTS:
        r = rows.get(name)
        if r is None:
            continue
        lines.append(f"| `{name}` | {r['what']} | " + " | ".join(f"{r['ppl'].get(d, float('nan')):.2f}"
                                                                for d in doms) + " |")
    peer = _peer_rows()
    if peer:
        lines += ["", "llm-compressor (bench/quality.py peer side, same windows):", "",
                  "| peer row | " + " | ".join(doms) + " |", "|---|" + "---:|" * len(doms)]
        for name, ppl in peer.items():
            lines.append(f"| `{name}` | " + " | ".join(f"{ppl.get(d, float('nan')):.2f}" for d in doms) + " |")
    return "\n".join(lines)


def _peer_rows(path: Path = REPO / "bench" / "results" / "quality.json") -> dict[str, dict[str, float]]:
    """The peer's perplexities on every domain, from bench/quality.py's results (rows it has run with OOD)."""
    if not path.exists():
        return {}
    out = {}
    for name, row in json.loads(path.read_text()).get("rows", {}).items():
        pe = row.get("peer") or {}
        if pe.get("status") == "ok" and pe.get("ppl_ood") and not pe.get("shared_with"):
            out[name] = {"wikitext": pe["ppl"], **pe["ppl_ood"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", help="comma-separated variant names (see --list)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ood_ablation")
    p.add_argument("--force", action="store_true", help="recompute cached variants")
    p.add_argument("--list", action="store_true")
    p.add_argument("--table", action="store_true", help="print the markdown table of the cached variants")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    args = p.parse_args(argv)
    setup_logging()
    if args.list:
        for k, v in VARIANTS.items():
            print(f"{k:24s} {v[0]}")
        return 0
    if args.table:
        print(table(args.out))
        return 0
    torch.set_num_threads(args.threads)
    names = [v.strip() for v in (args.variants or "").split(",") if v.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise SystemExit(f"--variants: unknown {bad}" if bad else "--variants is required (see --list)")
    args.out.mkdir(parents=True, exist_ok=True)
    dense, tokenizer = load_dense()
    windows = token_windows(tokenizer)
    for n in names:
        path = args.out / f"{n}.json"
        if path.exists() and not args.force:
            log.info("%s: cached", n)
            continue
        log.info("%s ...", n)
        res = run_variant(n, dense, windows)
        res["command"] = "PYTHONPATH=. .venv/bin/python bench/ood_ablation.py " + " ".join(sys.argv[1:])
        res["loadavg"] = os.getloadavg()[0]
        path.write_text(json.dumps(res, indent=2))
        log.info("%s -> %s (%.0fs)", n, {k: round(v, 2) for k, v in res["ppl"].items()}, res["seconds"])
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
