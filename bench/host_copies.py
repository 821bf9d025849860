#!/usr/bin/env python3
"""Host <-> GPU copy rates for one 8B MLP weight (14336 x 4096 bf16, 117 MB): pageable vs pinned.

Why: compression/core/staging.py stages the engines' weight copies through reusable pinned
buffers; this measures what that buys on the machine at hand (BENCHMARKS §3a).

    python3 bench/host_copies.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.compression.core import staging  # noqa: E402


def rate(fn, nbytes: int, reps: int = 8) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 2
    host = torch.randn(14336, 4096).to(torch.bfloat16)
    dev = host.cuda()
    nbytes = host.numel() * 2
    back = torch.empty_like(host)
    rows = [
        ("H2D pageable (tensor.to)", rate(lambda: host.to("cuda"), nbytes)),
        ("H2D staged (staging.to_device)", rate(lambda: staging.to_device(host, "cuda"), nbytes)),
        ("D2H pageable (copy_)", rate(lambda: back.copy_(dev), nbytes)),
        ("D2H staged (staging.copy_to_host_)", rate(lambda: staging.copy_to_host_(back, dev), nbytes)),
    ]
    print(f"{torch.cuda.get_device_name()}, 117 MB bf16, median of 8, GB/s")
    for name, gbs in rows:
        print(f"| {name} | {gbs:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
