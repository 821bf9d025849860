"""Run every launch path of the tensor-core W4A16 kernel once on small shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck  python3 bench/sanitize_w4a16.py
    compute-sanitizer --tool racecheck python3 bench/sanitize_w4a16.py

Covers: staged activations (batch 1 and 5) with one and two stripes a block on an odd number of stripes
(the last block's missing stripe), the register path (batch 16 on a wide K), zero points, float32
scales, plain and programmatic launches, ragged K. Every result is also checked against the reference;
the exit status is 1 on a mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.kernels.w4a16 import mma  # noqa: E402
from presso.kernels.w4a16 import reference as ref  # noqa: E402

CASES = [  # (n, k, group size, zero points, float32 scales, batch rows)
    (300, 1000, 128, False, False, 1),  # 19 stripes, K padded to 1024
    (300, 1000, 64, True, True, 5),
    (48, 4096, 128, True, False, 16),  # 16 x 4096 x 2 bytes: not staged (register path)
]


def main() -> int:
    if not (torch.cuda.is_available() and mma.available()):
        print("needs a CUDA device and nvcc", file=sys.stderr)
        return 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    bad = 0
    for n, k, gs, asym, fp32, m in CASES:
        q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
        scale = torch.rand(n, -(-k // gs), generator=gen, device="cuda") * 0.02 + 0.002
        scale = scale if fp32 else scale.to(torch.bfloat16)
        zp = None
        if asym:
            z = torch.randint(-3, 3, scale.shape, generator=gen, device="cuda", dtype=torch.int8)
            zp = ref.pack_int(z.t().contiguous(), 4).t().contiguous()
        packed = ref.pack_int(q, 4)
        pw = mma.prepare(packed, scale, zp, gs, k)
        x = torch.randn(m, k, generator=gen, device="cuda", dtype=torch.bfloat16)
        want = ref.w4a16_matmul_ref(x, packed, scale, zp, 4, gs).float()
        for cfg in [c for c in mma.usable_configs(pw, m) if c[0] == 4 and c[1] == 4]:
            for pdl in (False, True):
                y = mma.matmul(x, pw, config=cfg, pdl=pdl).float()
                err = float((y - want).norm() / want.norm())
                ok = err <= 1e-2
                bad += not ok
                print(f"n={n} k={k} gs={gs} asym={asym} fp32={fp32} m={m} cfg={cfg} pdl={pdl}: "
                      f"rel err {err:.1e} {'ok' if ok else 'MISMATCH'}")
    torch.cuda.synchronize()
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
