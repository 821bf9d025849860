"""Second-moment statistics of layer inputs (X^T X), shared by GPTQ, SparseGPT, Wanda, SVD-LLM and EoRA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def gram_(acc: torch.Tensor, x: torch.Tensor, *, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """``acc = beta * acc + alpha * x^T x`` in fp32, for a 2-D ``x`` [tokens, k].

    Activations that arrive in bf16/fp16 are exactly representable in TF32 (8/10 mantissa bits), so
    on CUDA their products are computed on tensor cores in TF32 with fp32 accumulation: the same
    result as a full-fp32 matmul, several times faster. fp32 activations keep full fp32 math.
    """
    exact_tf32 = x.dtype in (torch.bfloat16, torch.float16) and acc.is_cuda
    xf = x.to(acc.device, torch.float32)
    with _tf32(exact_tf32):
        if beta != 1.0:  # a plain sum (HessianAccumulator) skips a pass over the k x k accumulator per batch
            acc.mul_(beta)
        acc.addmm_(xf.t(), xf, alpha=alpha)
    return acc


def inverse_cholesky_upper(h: torch.Tensor, diagonal: torch.Tensor | None = None) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``H^-1`` (``U^T U = H^-1``), from one Cholesky and one triangular solve.

    With ``J`` the flip, ``J H J = M M^T`` gives ``H^-1 = (J M^-1 J)^T (J M^-1 J)`` and ``J M^-1 J`` is
    upper triangular: the same factor as ``chol(cholesky_inverse(chol(H)), upper=True)`` at a third
    of the cost. Retries with more dampening when ``H`` is not positive definite. ``diagonal``: use it in place
    of ``H``'s diagonal (a dampened ``H`` without a dampened copy of it: the flip below is the only copy).
    Batched: ``h`` [E, K, K] (``diagonal`` [E, K]) gives each matrix's factor.
    """
    if h.dim() == 3:
        return _inverse_cholesky_upper_batched(h, diagonal)
    k = h.shape[0]
    mean_diag = torch.mean(torch.diagonal(h) if diagonal is None else diagonal)
    extra = 0.0
    # On the CPU (host memory is what a streamed CPU job is short of) the factor and the solve overwrite their
    # inputs: at most two k x k buffers besides ``h`` instead of three (8192-wide: 268 MB less). The GPU keeps the
    # out-of-place calls its benchmarks were measured with.
    in_place = h.device.type == "cpu"
    for _ in range(6):
        flipped = h.flip(0, 1)  # a copy: J H J (+ extra dampening on its diagonal, H's reversed)
        if diagonal is not None:
            torch.diagonal(flipped).copy_(diagonal.flip(0))
        if extra:
            torch.diagonal(flipped).add_(extra * mean_diag)
        if in_place:
            lower, info = torch.linalg.cholesky_ex(flipped, out=(flipped, torch.empty((), dtype=torch.int32)))
        else:
            lower, info = torch.linalg.cholesky_ex(flipped)
        del flipped
        if int(info) == 0:
            eye = torch.eye(k, device=h.device, dtype=h.dtype)
            inv = torch.linalg.solve_triangular(lower, eye, upper=False, out=eye if in_place else None)
            del lower, eye
            return inv.flip(0, 1)
        extra = 0.01 if extra == 0.0 else extra * 10
    raise FloatingPointError("Hessian is not positive definite even after extra dampening")


def _inverse_cholesky_upper_batched(h: torch.Tensor, diagonal: torch.Tensor | None) -> torch.Tensor:
    """One batched factorisation and solve; a matrix that is not positive definite is redone alone, with the extra
    dampening retries of :func:`inverse_cholesky_upper`, as it would be if factored alone."""
    flipped = h.flip(-2, -1)
    if diagonal is not None:
        torch.diagonal(flipped, dim1=-2, dim2=-1).copy_(diagonal.flip(-1))
    lower, info = torch.linalg.cholesky_ex(flipped)
    del flipped
    eye = torch.eye(h.shape[-1], device=h.device, dtype=h.dtype).expand_as(lower)
    inv = torch.linalg.solve_triangular(lower, eye, upper=False)
    del lower
    out = inv.flip(-2, -1)
    del inv
    for e in (info != 0).nonzero().flatten().tolist():
        out[e] = inverse_cholesky_upper(h[e], None if diagonal is None else diagonal[e])
    return out
