"""Launch the tensor-core W4A16 kernel a few times on one shape, for a profiler to look at.

    ncu --kernel-name regex:w4a16_mma --launch-skip 20 --launch-count 1 --section SpeedOfLight \\
        --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \\
        python bench/profile_w4a16.py --k 4096 --n 14336 --m 1

Weights rotate over enough copies to miss L2, as in bench/kernels_w4a16.py. Without a profiler it
prints the mean time a call (CUDA events around the whole loop, launch gaps included).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.kernels.w4a16 import mma  # noqa: E402
from presso.kernels.w4a16 import reference as ref  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=14336)
    ap.add_argument("--m", type=int, default=1, help="batch rows (1..16)")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--config", help="warps,depth,stripes (default: autotuned)")
    ap.add_argument("--pdl", action="store_true", help="programmatic dependent launch")
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args(argv)
    if not (torch.cuda.is_available() and mma.available()):
        print("needs a CUDA device and nvcc", file=sys.stderr)
        return 2
    k, n, gs = args.k, args.n, args.group_size
    q = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, -(-k // gs), device="cuda") * 0.01).to(torch.bfloat16)
    pw = mma.prepare(ref.pack_int(q, 4), scale, None, gs, k)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    copies = [pw] + [dataclasses.replace(pw, words=torch.randint_like(pw.words, -(2**31), 2**31 - 1))
                     for _ in range(max(1, math.ceil(2 * l2 / pw.nbytes)))]
    x = torch.randn(args.m, k, device="cuda", dtype=torch.bfloat16)
    config = tuple(int(v) for v in args.config.split(",")) if args.config else None
    mma.matmul(x, pw, config=config, pdl=args.pdl)  # build, autotune
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(args.calls):
        mma.matmul(x, copies[i % len(copies)], config=config, pdl=args.pdl)
    end.record()
    end.synchronize()
    chosen = config or mma.tuned_config(pw, args.m)
    print(f"K={k} N={n} M={args.m} config={chosen}: {start.elapsed_time(end) * 1e3 / args.calls:.2f} us/call "
          f"({pw.nbytes / 1e6:.1f} MB a call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
