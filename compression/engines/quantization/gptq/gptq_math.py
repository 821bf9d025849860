"""GPTQ / OBC solver as pure tensor functions (Frantar et al. 2022, checked against IST-DASLab/gptq).

``quantize_weight(W, H, scheme)`` quantizes the columns of ``W`` [N, K] one at a time and
spreads each column's rounding error over the not-yet-quantized columns with the inverse
Hessian ``H = 2/n sum x x^T`` of the layer inputs:

1. dead inputs (``H_ii = 0``) get ``H_ii = 1`` and a zero weight column;
2. dampening ``H += damp * mean(diag H) * I``;
3. ``U = chol(H^-1)`` upper: row ``i`` of ``U`` (from column ``i``) is the OBS update for column ``i``;
4. columns are processed in lazy blocks of ``block_size``: inside a block the update is applied
   column by column, the rest of the matrix gets one matmul per block;
5. group parameters: ``static_groups`` (the default) computes every group's scale/zero up front
   from the original weights, as llm-compressor does; ``static_groups=False`` chooses them when
   the solver enters a group, from the weights as they are at that moment (updated up to the
   start of the current block, as the IST-DASLab reference does). Dynamic groups let the grid
   follow the calibration-specific error compensation: on SmolLM2 they win on the calibration
   domain and lose off it (docs/quantization.md, "Out-of-domain: what each GPTQ setting does");
6. ``act_order``: columns in order of decreasing ``diag(H)``. Group parameters then come from
   the original, unpermuted groups computed up front (``static_groups`` must be true), so codes
   keep the plain contiguous group layout and the artifact needs no ``g_idx``.

Everything stays on ``W``'s device; the column loop has no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.quant import QuantizedWeight, choose_params, expand_groups, make_quantized, qrange
from presso.compression.core.stats import gram_, inverse_cholesky_upper
from presso.kernels.obs import obs_block


class HessianAccumulator:
    """``2/n sum x x^T`` and the mean ``|x|`` per channel over all rows seen, summed in a fixed order.

    Rows are summed in batch order within a calibration segment (``start_segment``), and the segments' sums
    are added left to right onto zeros: the order compression.core.distributed keeps across ranks, so one
    rank and several give bit-identical statistics. A rank after the first keeps its segment sums
    (``keep=True``) until the fold of the segments before them arrives (``finish``). Memory: the fold and
    the open segment's sum.
    """

    def __init__(self, k: int, device: torch.device, *, keep: bool = False) -> None:
        self.k, self.device, self.keep = k, device, keep
        self.n = 0
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # (sum x^T x, sum |x|) per closed segment
        self._fold: tuple[torch.Tensor, torch.Tensor] | None = None
        self._open: tuple[torch.Tensor, torch.Tensor] | None = None
        self._segment: int | None = None
        self._result: tuple[torch.Tensor, torch.Tensor] | None = None

    def start_segment(self, segment: int) -> None:
        if segment != self._segment:
            self._close()
            self._segment = segment

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        if x.shape[0] == 0:
            return
        if self._open is None:
            self._open = (torch.zeros(self.k, self.k, dtype=torch.float32, device=self.device),
                          torch.zeros(self.k, dtype=torch.float32, device=self.device))
        gram_(self._open[0], x)
        self._open[1].add_(x.to(self.device).abs().float().sum(0))
        self.n += x.shape[0]

    def _close(self) -> None:
        if self._open is None:
            return
        if self.keep:
            self.kept.append(self._open)
        else:
            self._fold = fold_(self._fold, self._open)
        self._open = None

    def local_fold(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This rank's fold of its closed segments (rank 0's part of the chain)."""
        self._close()
        return self._fold

    def finish(self, total: tuple[torch.Tensor, torch.Tensor] | None = None, n: int | None = None) -> None:
        """Scale the sums (or ``total``, the fold over every rank, and ``n`` rows) into the statistics."""
        self._close()
        s = total if total is not None else self._fold
        n = self.n if n is None else n
        if s is None or n == 0:
            s = (torch.zeros(self.k, self.k, device=self.device), torch.zeros(self.k, device=self.device))
            n = max(n, 1)
        self._result = (s[0].to(self.device).mul_(2.0 / n), s[1].to(self.device).mul_(1.0 / n))
        self._fold, self.kept = None, []

    def _final(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._result is None:
            self.finish()
        assert self._result is not None
        return self._result

    @property
    def h(self) -> torch.Tensor:
        return self._final()[0]

    @property
    def abs_mean(self) -> torch.Tensor:
        return self._final()[1]


def fold_(acc: tuple[torch.Tensor, torch.Tensor] | None,
          s: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``acc + s`` in place, ``acc`` starting from zeros (so a first segment sum's -0.0 becomes +0.0 as in
    ``0 + s``, on every rank)."""
    if acc is None:
        return s[0].add_(0.0), s[1].add_(0.0)
    return acc[0].add_(s[0]), acc[1].add_(s[1])


@dataclass
class _Params:
    """Per-column scale/zero of the current (dynamic) or all (static) groups, plus the group table."""

    scale: torch.Tensor  # [N, G]
    zero: torch.Tensor  # [N, G]


def prepare_hessian(h: torch.Tensor, w: torch.Tensor, damp_percent: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead columns and dampening; returns (H, dead mask). ``w`` has its dead columns zeroed in place."""
    h = h.clone()
    dead = torch.diagonal(h) == 0
    torch.diagonal(h).add_(dead.to(h.dtype))
    w.masked_fill_(dead.unsqueeze(0), 0.0)
    damp = damp_percent * torch.mean(torch.diagonal(h))
    torch.diagonal(h).add_(damp)
    return h, dead


def damped_inverse_upper(h: torch.Tensor, w: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """``inverse_cholesky_upper(prepare_hessian(h, w, damp_percent)[0])`` without the damped copy of ``h``
    (one k x k buffer less: the largest input's Hessian is what a CPU job's host memory peaks on). ``w`` has its
    dead columns zeroed in place; ``h`` is not changed. Batched: ``h`` [E, K, K] and ``w`` [E, N, K], each layer
    dampened by its own mean diagonal."""
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag == 0
    w.masked_fill_(dead.unsqueeze(-2), 0.0)
    diag = diag + dead.to(h.dtype)
    mean = torch.mean(diag) if h.dim() == 2 else diag.mean(-1, keepdim=True)
    return inverse_cholesky_upper(h, diagonal=diag + damp_percent * mean)


SPARSE_MASK_MIN = 0.10  # fraction of exact zeros above which a layer counts as pruned


def _static_params(w: torch.Tensor, scheme: QuantArgs, group: int) -> _Params:
    scale, zero = choose_params(w, scheme.model_copy(update={"group_size": group}))
    return _Params(scale=scale, zero=zero)


def quantize_weight(
    w: torch.Tensor,
    h: torch.Tensor,
    scheme: QuantArgs,
    *,
    damp_percent: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    static_groups: bool = True,
) -> tuple[QuantizedWeight, dict[str, float]]:
    """GPTQ-quantize ``w`` [N, K] given the input Hessian ``h`` [K, K]. Returns codes and stats.

    ``scheme.group_size`` must already be resolved (a divisor of K, or -1 for per channel).
    """
    if not act_order:
        qws, losses = quantize_weights(w.unsqueeze(0), h.unsqueeze(0), scheme, damp_percent=damp_percent,
                                       block_size=block_size, static_groups=static_groups)
        return qws[0], {"loss": losses[0]}
    group = scheme.group_size if 0 < scheme.group_size < w.shape[1] else -1
    if group > 0 and not static_groups:
        raise ValueError("act_order with dynamic groups needs g_idx, which pack-quantized artifacts do not carry")
    w = w.float().clone()
    h, _dead = prepare_hessian(h.to(w.device, torch.float32), w, damp_percent)
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
    params = _static_params(w, scheme, group)
    w = w[:, perm]
    hinv = inverse_cholesky_upper(h[perm][:, perm])
    del h
    q, scale, zero, losses = _solve(w.unsqueeze(0), hinv.unsqueeze(0), scheme, group, block_size, params, perm,
                                    _kept_zeros(w.unsqueeze(0)))
    q = q[:, torch.argsort(perm)]
    return make_quantized(q, scale, zero, scheme.model_copy(update={"group_size": group})), {"loss": losses[0]}


def quantize_weights(
    w: torch.Tensor,
    h: torch.Tensor,
    scheme: QuantArgs,
    *,
    damp_percent: float = 0.01,
    block_size: int = 128,
    static_groups: bool = True,
    hinv: torch.Tensor | None = None,
) -> tuple[list[QuantizedWeight], list[float]]:
    """GPTQ (columns in order) of E same-shape layers together: ``w`` [E, N, K], ``h`` [E, K, K] (each layer its
    own Hessian, e.g. the experts of a mixture-of-experts block). One batched factorisation and one column loop
    for all E: the codes each layer would get alone, in a fraction of the GPU kernel launches. Returns the codes
    and the loss of each layer. ``hinv``: the factors ``damped_inverse_upper(h, w, damp_percent)`` already made
    (one layer quantized at several levels: the factorisation is the same for all)."""
    w = w.float().clone(memory_format=torch.contiguous_format)  # rows are viewed flat below
    e, n, k = w.shape
    group = scheme.group_size if 0 < scheme.group_size < k else -1
    h = h.to(w.device, torch.float32)
    if hinv is not None:  # dead columns zeroed, as damped_inverse_upper does
        w.masked_fill_((torch.diagonal(h, dim1=-2, dim2=-1) == 0).unsqueeze(-2), 0.0)
    # zeroes w's dead columns first, as prepare_hessian; one layer keeps the 2-D (in place on the CPU) factorisation
    elif e == 1:
        hinv = damped_inverse_upper(h[0], w[0], damp_percent).unsqueeze(0)
    else:
        hinv = damped_inverse_upper(h, w, damp_percent)
    del h
    flat = w.view(-1, k)
    params = _static_params(flat, scheme, group) if group < 0 or static_groups else None
    q, scale, zero, losses = _solve(w, hinv, scheme, group, block_size, params, None, _kept_zeros(w))
    resolved = scheme.model_copy(update={"group_size": group})
    rows = [slice(i * n, (i + 1) * n) for i in range(e)]
    return [make_quantized(q[r], scale[r], zero[r], resolved) for r in rows], losses


def _kept_zeros(w: torch.Tensor) -> torch.Tensor | None:
    """A pruned layer (e.g. sparsegpt -> gptq) keeps its mask: zeros stay exactly zero and the error of forcing
    them is compensated like any other rounding error. ``w`` [E, N, K]: the mask of the layers with at least
    ``SPARSE_MASK_MIN`` zeros (the others' rows all False), or None when no layer has."""
    zeros = w == 0
    pruned = zeros.float().mean(dim=(1, 2)) >= SPARSE_MASK_MIN
    if not bool(pruned.any()):
        return None
    return zeros & pruned[:, None, None]


def _column_params(params: _Params, k: int, group: int, perm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    s = expand_groups(params.scale, k, group)
    z = expand_groups(params.zero, k, group)
    if perm is not None:
        s, z = s[:, perm], z[:, perm]
    return s, z


def _solve(
    w: torch.Tensor,
    hinv: torch.Tensor,
    scheme: QuantArgs,
    group: int,
    block_size: int,
    params: _Params | None,
    perm: torch.Tensor | None,
    keep_zero: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """The lazy-batch column loop over ``w`` [E, N, K] with each layer's factor ``hinv`` [E, K, K]. ``params``
    given = static groups (per-column lookup). Returns codes, scale and zero with the layers' rows stacked
    ([E * N, ...]) and each layer's loss.

    Dynamic groups read ``w`` as it is when the solver enters the block holding the group's
    first column (``w`` itself only changes between blocks), so every group starting in a block
    is chosen at the block's start and the column loop itself (``presso.kernels.obs``) only looks
    parameters up. Group parameters are per row, so they are chosen for every layer's rows at once.
    """
    e, n, k = w.shape
    flat = w.view(e * n, k)
    qmin, qmax = qrange(scheme.bits)
    codes = torch.empty_like(flat)
    losses = torch.zeros(e, device=w.device)
    if params is not None:
        s_cols, z_cols = _column_params(params, k, group, perm)
        scale, zero = params.scale, params.zero
    else:
        ngroups = k // group
        scale = torch.zeros(e * n, ngroups, device=w.device)
        zero = torch.zeros(e * n, ngroups, device=w.device)
        col_group = torch.arange(k, device=w.device) // group
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        if params is None:
            g1, g2 = -(-i1 // group), -(-i2 // group)  # groups whose first column is in [i1, i2)
            if g2 > g1:
                gs, gz = choose_params(flat[:, g1 * group : g2 * group], scheme)
                scale[:, g1:g2], zero[:, g1:g2] = gs, gz
            s_blk, z_blk = scale[:, col_group[i1:i2]], zero[:, col_group[i1:i2]]
        else:
            s_blk, z_blk = s_cols[:, i1:i2], z_cols[:, i1:i2]
        prune = keep_zero[:, :, i1:i2] if keep_zero is not None else None
        if e == 1:  # the 2-D kernel and update, as a lone layer has always been solved
            _, err1, c = obs_block(flat[:, i1:i2], hinv[0, i1:i2, i1:i2], s_blk, z_blk, qmin, qmax,
                                   prune[0] if prune is not None else None)
            flat[:, i2:].addmm_(err1, hinv[0, i1:i2, i2:], alpha=-1.0)
            losses += err1.pow(2).sum() / 2
        else:
            shape = (e, n, i2 - i1)
            _, err3, c = obs_block(w[:, :, i1:i2], hinv[:, i1:i2, i1:i2], s_blk.reshape(shape),
                                   z_blk.reshape(shape), qmin, qmax, prune)
            w[:, :, i2:].baddbmm_(err3, hinv[:, i1:i2, i2:], alpha=-1.0)
            losses += err3.pow(2).sum(dim=(1, 2)) / 2
        assert c is not None
        codes[:, i1:i2] = c.reshape(e * n, i2 - i1)
    return codes, scale, zero, losses.tolist()


def output_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """Relative layer-output error ``||X dW^T|| / ||X W^T||`` computed from ``H`` (no activations needed)."""
    h = h.to(w.device, torch.float32)
    w = w.float()
    dw = w_hat.to(w.device, torch.float32) - w
    num = ((dw @ h) * dw).sum()
    den = ((w @ h) * w).sum().clamp_min(1e-20)
    return float(torch.sqrt(num.clamp_min(0) / den))
