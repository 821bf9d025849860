"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with lazy block updates. Pure functions.

For a weight W [rows, cols] and the Hessian H = 2/n X^T X of its inputs:
1. Dead inputs (H_jj = 0) are zeroed; H is damped by ``damp * mean(diag H)``; U = chol(H^-1)^T
   (upper), whose rows give the OBS updates column by column.
2. Columns are processed in blocks of ``block_size``. Unstructured: at the start of a block the
   mask is chosen over the whole block from w^2 / [U_jj]^2 (the OBS saliency, with [H^-1]_jj
   as U_jj^2), pruning exactly ``round(sparsity * block numel)`` weights; N:M: every M columns
   the M - N smallest saliencies of each row go.
3. Column j: pruned weights become 0 (and, in joint mode, the survivors are quantized); the error
   (w - q) / U_jj is spread over the block's later columns through U's row j; after the block,
   the accumulated error is applied to all later columns at once (the lazy batch update).

Joint mode (``qargs``): each column is quantized right after pruning, with group scales fixed at
the start of each group from the group's current (error-updated) weights; 0 maps to a code that
dequantizes to exactly 0, so the mask survives quantization.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.quant import QuantizedWeight, choose_params, make_quantized, qrange
from presso.compression.core.stats import inverse_cholesky_upper
from presso.compression.engines.pruning.masks import count_pruned, keep_all_but_smallest
from presso.kernels.obs import obs_block


@dataclass
class SparseGPTResult:
    weight: torch.Tensor  # [rows, cols] float32, pruned (and dequantized in joint mode)
    quantized: QuantizedWeight | None
    loss: float  # sum of the OBS losses (w - q)^2 / [H^-1]_jj / 2


def inverse_hessian_factor(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of (H + damp*mean(diag)*I)^-1, and the mask of dead input columns."""
    h = h.float()  # not changed: the dampened diagonal goes to the factorisation's own copy
    dead = torch.diagonal(h) == 0
    diag = torch.diagonal(h).masked_fill(dead, 1.0)
    return inverse_cholesky_upper(h, diagonal=diag + damp * diag.mean()), dead


class _ColumnQuantizer:
    """Per-group scale/zero chosen at each group's first column; quantizes one column at a time."""

    def __init__(self, w: torch.Tensor, args: QuantArgs) -> None:
        rows, cols = w.shape
        self.args = args
        self.per_channel = args.group_size <= 0
        self.g = cols if self.per_channel else args.group_size
        ngroups = (cols + self.g - 1) // self.g
        self.scale = w.new_zeros(rows, ngroups)
        self.zero = w.new_zeros(rows, ngroups)
        self.codes = w.new_zeros(rows, cols)
        self.qmin, self.qmax = qrange(args.bits)

    def start_group(self, j: int, group_weights: torch.Tensor) -> None:
        single = self.args.model_copy(update={"group_size": -1})
        s, z = choose_params(group_weights, single)
        self.scale[:, j // self.g] = s[:, 0]
        self.zero[:, j // self.g] = z[:, 0]

    def quantize(self, j: int, col: torch.Tensor) -> torch.Tensor:
        s, z = self.scale[:, j // self.g], self.zero[:, j // self.g]
        q = torch.clamp(torch.round(col / s) + z, self.qmin, self.qmax)
        self.codes[:, j] = q
        return (q - z) * s

    def result(self) -> QuantizedWeight:
        return make_quantized(self.codes, self.scale, self.zero, self.args)


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """The solver is a loop of many small ops: on the CPU, intra-op threads mostly add barrier
    waits (30x slower on a loaded 2-core machine), so it runs on one thread."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _block_mask(w1: torch.Tensor, d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True = prune: the ``round(sparsity * numel)`` smallest w^2/d^2 of the block."""
    sal = (w1 * w1 / (d * d).unsqueeze(0)).reshape(-1)
    return ~keep_all_but_smallest(sal, count_pruned(sal.numel(), sparsity)).reshape(w1.shape)


def _block_size(cols: int, block_size: int, qargs: QuantArgs | None) -> int:
    """Blocks hold whole quantization groups, so a group's scales see its updated weights."""
    if qargs is None or qargs.group_size <= 0:
        return min(block_size, cols)
    g = qargs.group_size
    return min(cols, max(1, round(block_size / g)) * g)


def _prune_block(w1: torch.Tensor, u1: torch.Tensor, j0: int, sparsity: float, nm: tuple[int, int] | None,
                 quant: _ColumnQuantizer | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune (and quantize) the columns of one block in place; returns the scaled errors and the loss.

    Unstructured pruning without joint quantization fixes the block's mask up front, so the column
    loop is ``presso.kernels.obs`` (one Triton launch per block on CUDA); N:M masks and joint quantization
    choose per column group from the updated weights and run the loop here.
    """
    d = torch.diag(u1)
    if nm is None and quant is None:
        q, err1, _ = obs_block(w1, u1, prune=_block_mask(w1, d, sparsity))
        w1.copy_(q)
        return err1, err1.pow(2).sum() / 2
    count = w1.shape[1]
    err1 = torch.zeros_like(w1)
    mask1 = _block_mask(w1, d, sparsity) if nm is None else torch.zeros_like(w1, dtype=torch.bool)
    for i in range(count):
        if nm is not None and i % nm[1] == 0:
            sal = w1[:, i:i + nm[1]] ** 2 / (d[i:i + nm[1]] ** 2).unsqueeze(0)
            idx = torch.topk(sal, nm[1] - nm[0], dim=1, largest=False).indices
            mask1[:, i:i + nm[1]].scatter_(1, idx, True)
        if quant is not None and not quant.per_channel and (j0 + i) % quant.g == 0:
            quant.start_group(j0 + i, (w1[:, i:i + quant.g] * ~mask1[:, i:i + quant.g]))
        w = w1[:, i]
        q = w.masked_fill(mask1[:, i], 0.0)
        if quant is not None:
            q = quant.quantize(j0 + i, q)
        e = (w - q) / d[i]
        w1[:, i:] -= e.unsqueeze(1) @ u1[i, i:].unsqueeze(0)
        w1[:, i] = q
        err1[:, i] = e
    return err1, err1.pow(2).sum() / 2


def _sparsegpt(w: torch.Tensor, h: torch.Tensor, *, sparsity: float, nm: tuple[int, int] | None = None,
                    block_size: int = 128, damp: float = 0.01, qargs: QuantArgs | None = None) -> SparseGPTResult:
    w = w.float().clone()
    cols = w.shape[1]
    u, dead = inverse_hessian_factor(h.to(w.device), damp)
    w[:, dead] = 0
    quant = _ColumnQuantizer(w, qargs) if qargs is not None else None
    if quant is not None and quant.per_channel:
        quant.start_group(0, w)
    bs = _block_size(cols, block_size, qargs)
    if nm is not None and bs % nm[1]:
        bs = max(nm[1], bs // nm[1] * nm[1])
    loss = torch.zeros((), device=w.device)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        w1 = w[:, i1:i2].clone()
        err1, block_loss = _prune_block(w1, u[i1:i2, i1:i2], i1, sparsity, nm, quant)
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
        loss += block_loss
    qw = quant.result() if quant is not None else None
    return SparseGPTResult(weight=qw.dequantize().to(w.device) if qw is not None else w, quantized=qw,
                           loss=float(loss))


def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, *, sparsity: float, nm: tuple[int, int] | None = None,
                    block_size: int = 128, damp: float = 0.01, qargs: QuantArgs | None = None) -> SparseGPTResult:
    """Prune ``w`` [rows, cols] to ``sparsity`` (or N:M, (kept, M)) minimizing ||(W - W')X||^2."""
    with _one_cpu_thread(w.device):
        return _sparsegpt(w, h, sparsity=sparsity, nm=nm, block_size=block_size, damp=damp, qargs=qargs)
