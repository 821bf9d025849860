"""One Pareto plot of every §1 row (issue 19): integer, sparse, low-rank (bench/quality.py's results) and the
deployment formats FP8 / INT8 W8A8 / NVFP4 / MXFP4 (bench/quality_formats.py's), perplexity against artifact
weight bytes, Presso's points and front beside llm-compressor's. Nothing is measured here: it reads the JSON the
two benchmarks wrote (activations quantized in the evaluation for the A8/A4 rows, on both sides).

  PYTHONPATH=. .venv/bin/python bench/pareto_all.py                  # the H200 results -> pareto_all_h200.png
  PYTHONPATH=. .venv/bin/python bench/pareto_all.py --formats-override <a later formats JSON, e.g. NVFP4's>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import plots  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ACTIVATIONS = {"fp8_dynamic": "A8", "fp8_static": "A8", "fp8_block": "A8", "int8_w8a8_rtn": "A8",
               "int8_w8a8_gptq": "A8", "nvfp4_w4a4": "A4", "mxfp4_w4a4": "A4"}


def merged_rows(quality: Path, formats: Path, overrides: list[Path]) -> dict[str, dict[str, Any]]:
    """The quality rows, then the format rows (named with their activation width where they quantize it);
    an override file's Presso side replaces a format row's (e.g. a later re-measurement of NVFP4)."""
    rows: dict[str, dict[str, Any]] = dict(json.loads(quality.read_text())["rows"])
    fmt = {k: v for k, v in json.loads(formats.read_text()).items() if isinstance(v, dict) and "presso" in v}
    for path in overrides:
        for name, row in json.loads(path.read_text()).items():
            if name in fmt and isinstance(row, dict) and (row.get("presso") or {}).get("status") == "ok":
                fmt[name] = {**fmt[name], "presso": row["presso"]}
    for name, row in fmt.items():
        rows[f"{name} ({ACTIVATIONS[name]})" if name in ACTIVATIONS else name] = row
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quality", type=Path, default=RESULTS / "quality_h200.json")
    p.add_argument("--formats", type=Path, default=RESULTS / "quality_formats_h200.json")
    p.add_argument("--formats-override", type=Path, action="append", default=[],
                   help="format results whose Presso rows replace --formats' (repeatable)")
    p.add_argument("--out", type=Path, default=RESULTS / "pareto_all_h200.png")
    a = p.parse_args()
    rows = merged_rows(a.quality, a.formats, a.formats_override)
    plots.pareto(rows, a.out, ymax=400, title="SmolLM2-135M, every §1 row: perplexity vs artifact size")
    zoom = a.out.with_name(a.out.stem + "_zoom.png")
    plots.pareto(rows, zoom, ymax=80, xlim=(150, 240), title="the 4-8 bit region (zoom)")
    front = plots.frontier([(r["presso"]["weights_bytes"] / 1e6, r["presso"]["ppl"]) for r in rows.values()
                            if plots._ok(r.get("presso"), "ppl", "weights_bytes")])
    on_front = [n for n, r in rows.items() if plots._ok(r.get("presso"), "ppl", "weights_bytes")
                and (r["presso"]["weights_bytes"] / 1e6, r["presso"]["ppl"]) in front]
    print(f"wrote {a.out} and {zoom.name}: {len(rows)} rows; Presso's front: {', '.join(on_front)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
