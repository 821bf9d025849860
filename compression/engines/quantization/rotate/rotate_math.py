"""Orthogonal rotations of the residual stream: randomized Hadamard matrices. Pure torch, float64.

``hadamard(n)``: Sylvester's construction, n a power of two, normalized (``H H^T = I``). ``rotation(d)``:
for d = 2^k · m (m odd), ``(H_{2^k} ⊗ R_m) · diag(±1)``, with ``R_m`` a random orthogonal matrix (QR of a
Gaussian, m = 1 gives the pure randomized Hadamard of QuaRot); ``kind="random"``: a random orthogonal d x d.
Any orthogonal Q keeps the folded model's function; Hadamard spreads each outlier channel evenly over all
channels (incoherence), which is what W4A4 quantization needs.
"""

from __future__ import annotations

import torch


def hadamard(n: int) -> torch.Tensor:
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester Hadamard matrices exist for powers of two, not {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).contiguous()  # Haar-distributed


def rotation(d: int, kind: str = "hadamard", seed: int = 0) -> torch.Tensor:
    """An orthogonal d x d matrix (float64) for the residual stream."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        return random_orthogonal(d, gen)
    two = d & -d  # largest power of two dividing d
    m = d // two
    core = hadamard(two) if m == 1 else torch.kron(hadamard(two), random_orthogonal(m, gen))
    signs = torch.randint(0, 2, (d,), generator=gen).to(torch.float64) * 2 - 1
    return signs.unsqueeze(1) * core  # diag(signs) @ core
